// GGUF F16 matrices (what llama-quantize leaves of a matrix whose rows are not whole blocks) as
// llama.cpp's CPU backend multiplies them (issue 21): the activations rounded to float16 (the
// vec_dot_type of F16 is F16), then ggml's `ggml_vec_dot_f16` on x86 without AVX512-FP16, read
// from ggml-cpu's vec.cpp and simd-mappings.h:
//
// - four accumulators of 16 float lanes over chunks of 64 elements: accumulator j, lane l takes
//   elements 64c + 16j + l, fused-multiply-added in chunk order;
// - reduced as GGML_F32x16_REDUCE: acc0 + acc2, acc1 + acc3, then their sum, then
//   `_mm512_reduce_add_ps` as GCC implements it (high 8 + low 8, high 4 + low 4, lanes {0+2, 1+3},
//   then their sum), widened to double;
// - the last cols mod 64 elements added one by one in double (each product exact in float);
// - the double rounded to float once.
//
// AVX2 (two 8-lane halves per 16-lane accumulator) and portable C (fmaf) take exactly these steps,
// so the bits are the same at every level, for any number of tokens and any split over threads.
// llama.cpp's own result depends on the batch: for two tokens or more, when the row count is a
// multiple of 4, it runs llamafile's tinyBLAS, which sums in another order (one 16-lane accumulator
// over chunks of 16, the tail zero-padded, the same reduction, no double). A product here keeps one
// order whatever the batch, so a sequence's outputs do not depend on it: ggml_vec_dot_f16's by
// default (decoding's), tinyBLAS's with order 1 (`MOE_GGUF_F16=tinyblas`, for measurements).
#include "CKernels.h"
#include "internal.h"

#pragma STDC FP_CONTRACT OFF

/// Elements per chunk of ggml_vec_dot_f16 (GGML_F16_STEP on AVX-512 without FP16 arithmetic).
#define F16_STEP 64

/// ggml's fp32 → fp16 (round to nearest even, as `_mm512_cvtps_ph(x, 0)` and `_cvtss_sh(x, 0)`).
static inline uint16_t f32_to_f16(float f) {
    _Float16 h = (_Float16)f;
    uint16_t bits;
    __builtin_memcpy(&bits, &h, 2);
    return bits;
}

/// The 16-lane reduction of GCC's `_mm512_reduce_add_ps`.
static inline float reduce16(const float *v) {
    float t[8], u[4];
    for (int i = 0; i < 8; i++) t[i] = v[i + 8] + v[i];
    for (int i = 0; i < 4; i++) u[i] = t[i + 4] + t[i];
    const float a = u[0] + u[2], b = u[1] + u[3];
    return a + b;
}

static float dot_portable(const uint16_t *w, const uint16_t *x, int64_t cols) {
    const int64_t np = cols & ~(int64_t)(F16_STEP - 1);
    float acc[4][16] = {{0}};
    for (int64_t i = 0; i < np; i += F16_STEP)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 16; l++) {
                const int64_t e = i + 16 * j + l;
                acc[j][l] = __builtin_fmaf(moe_f16_to_f32(w[e]), moe_f16_to_f32(x[e]), acc[j][l]);
            }
    float s[16];
    for (int l = 0; l < 16; l++) {
        const float a = acc[0][l] + acc[2][l], b = acc[1][l] + acc[3][l];
        s[l] = a + b;
    }
    double sum = (double)reduce16(s);
    for (int64_t e = np; e < cols; e++) {
        const float p = moe_f16_to_f32(w[e]) * moe_f16_to_f32(x[e]);
        sum += (double)p;
    }
    return (float)sum;
}

/// llamafile's tinyBLAS order (what llama.cpp runs for two tokens or more when the row count is a
/// multiple of 4): one 16-lane accumulator over chunks of 16, the last partial chunk zero-padded
/// (`load_partial`), then the 16-lane reduction, in float.
static float dot_tinyblas_portable(const uint16_t *w, const uint16_t *x, int64_t cols) {
    float acc[16] = {0};
    for (int64_t i = 0; i < cols; i += 16)
        for (int l = 0; l < 16; l++) {
            const int64_t e = i + l;
            const float a = e < cols ? moe_f16_to_f32(w[e]) : 0.0f, b = e < cols ? moe_f16_to_f32(x[e]) : 0.0f;
            acc[l] = __builtin_fmaf(a, b, acc[l]);
        }
    return reduce16(acc);
}

#if defined(__x86_64__)
#include <immintrin.h>
#pragma clang attribute push (__attribute__((target("avx2,fma,f16c"))), apply_to = function)

static inline __m256 load8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

static float dot_avx2(const uint16_t *w, const uint16_t *x, int64_t cols) {
    const int64_t np = cols & ~(int64_t)(F16_STEP - 1);
    // acc[2j + h]: accumulator j, lanes 8h..8h+7.
    __m256 acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    for (int64_t i = 0; i < np; i += F16_STEP)
        for (int k = 0; k < 8; k++)
            acc[k] = _mm256_fmadd_ps(load8(w + i + 8 * k), load8(x + i + 8 * k), acc[k]);
    float sum16[16];
    for (int h = 0; h < 2; h++) {
        const __m256 a = _mm256_add_ps(acc[h], acc[4 + h]), b = _mm256_add_ps(acc[2 + h], acc[6 + h]);
        _mm256_storeu_ps(sum16 + 8 * h, _mm256_add_ps(a, b));
    }
    double sum = (double)reduce16(sum16);
    for (int64_t e = np; e < cols; e++) {
        const float p = moe_f16_to_f32(w[e]) * moe_f16_to_f32(x[e]);
        sum += (double)p;
    }
    return (float)sum;
}

static float dot_tinyblas_avx2(const uint16_t *w, const uint16_t *x, int64_t cols) {
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= cols; i += 16) {
        lo = _mm256_fmadd_ps(load8(w + i), load8(x + i), lo);
        hi = _mm256_fmadd_ps(load8(w + i + 8), load8(x + i + 8), hi);
    }
    if (i < cols) {
        uint16_t pw[16] = {0}, px[16] = {0}; // float16 zeros, as load_partial pads
        for (int64_t e = i; e < cols; e++) { pw[e - i] = w[e]; px[e - i] = x[e]; }
        lo = _mm256_fmadd_ps(load8(pw), load8(px), lo);
        hi = _mm256_fmadd_ps(load8(pw + 8), load8(px + 8), hi);
    }
    float sum16[16];
    _mm256_storeu_ps(sum16, lo);
    _mm256_storeu_ps(sum16 + 8, hi);
    return reduce16(sum16);
}

static void round_avx2(const float *x, int64_t count, uint16_t *out) {
    int64_t i = 0;
    for (; i + 8 <= count; i += 8)
        _mm_storeu_si128((__m128i *)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < count; i++) out[i] = f32_to_f16(x[i]);
}

#pragma clang attribute pop
#endif

void moe_round_f16(int level, const float *x, int64_t count, uint16_t *out) {
#if defined(__x86_64__)
    if (level >= MOE_KERNEL_AVX2) { round_avx2(x, count, out); return; }
#endif
    (void)level;
    for (int64_t i = 0; i < count; i++) out[i] = f32_to_f16(x[i]);
}

void moe_gemm_f16_f16(int level, int order, const uint16_t *w, int64_t cols, int64_t row_begin, int64_t row_end,
                      const uint16_t *x, int64_t n, float *y, int64_t ldy) {
    float (*dot)(const uint16_t *, const uint16_t *, int64_t) = order == 1 ? dot_tinyblas_portable : dot_portable;
#if defined(__x86_64__)
    if (level >= MOE_KERNEL_AVX2) dot = order == 1 ? dot_tinyblas_avx2 : dot_avx2;
#endif
    (void)level;
    for (int64_t r = row_begin; r < row_end; r++)
        for (int64_t t = 0; t < n; t++)
            y[t * ldy + r] = dot(w + r * cols, x + t * cols, cols);
}
