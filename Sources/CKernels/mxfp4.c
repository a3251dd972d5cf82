// MXFP4 (gpt-oss's expert format) times float activations, in llama.cpp's block_mxfp4 layout:
// 17 bytes per 32 weights, byte 0 the e8m0 exponent, bytes 1...16 value j in the low and value
// j + 16 in the high nibble of byte j.
//
// C because Swift SIMD lowers the nibble decoding (byte widening, per-lane selects) to scalar
// code: the Swift kernel processed 0.2-0.4 GB/s of blocks where q4 runs at ~10-30 GB/s.
//
// The arithmetic of one output, identical at every level (bit-identical across machines, thread
// splits and batch sizes): per block, lane l (0...7) forms p_l = w_l·x_l, then fma with elements
// l+8, l+16, l+24 in that order; acc_l = fma(p_l, scale, acc_l);
// y = ((acc0+acc4)+(acc2+acc6)) + ((acc1+acc5)+(acc3+acc7)).
#include "CKernels.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

/// `2^(e-127)`; 0 gives the subnormal 2^-127, 255 NaN (the OCP e8m0 definition).
static inline float mxfp4_scale(uint8_t e) {
    uint32_t bits = e == 0 ? 0x00400000u : (e == 255 ? 0x7FC00000u : (uint32_t)e << 23);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static const float mxfp4_values[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};

static inline float mxfp4_reduce(const float *acc) {
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

static void gemv_mxfp4_portable(const uint8_t *blocks, int64_t cols, int64_t row_begin, int64_t row_end,
                                const float *x, int64_t n, float *y, int64_t ldy) {
    const int64_t per_row = cols / 32;
    for (int64_t r = row_begin; r < row_end; r++) {
        for (int64_t i = 0; i < n; i++) {
            float acc[8] = {0};
            const float *xi = x + i * cols;
            for (int64_t b = 0; b < per_row; b++) {
                const uint8_t *block = blocks + (r * per_row + b) * 17;
                const float d = mxfp4_scale(block[0]);
                const float *xb = xi + b * 32;
                for (int l = 0; l < 8; l++) {
                    float w[4] = {mxfp4_values[block[1 + l] & 0xF], mxfp4_values[block[9 + l] & 0xF],
                                  mxfp4_values[block[1 + l] >> 4], mxfp4_values[block[9 + l] >> 4]};
                    float p = w[0] * xb[l];
                    p = fmaf(w[1], xb[l + 8], p);
                    p = fmaf(w[2], xb[l + 16], p);
                    p = fmaf(w[3], xb[l + 24], p);
                    acc[l] = fmaf(p, d, acc[l]);
                }
            }
            y[i * ldy + r] = mxfp4_reduce(acc);
        }
    }
}

#if defined(__x86_64__)
#pragma clang attribute push (__attribute__((target("avx2,fma"))), apply_to = function)
/// Eight codes (one per int32 lane) to their e2m1 values: the magnitude by a permute of the
/// eight positive values, the sign (bit 3) moved to the float's sign bit.
static inline __m256 mxfp4_decode8(__m256i codes, __m256 magnitudes) {
    __m256 magnitude = _mm256_permutevar8x32_ps(magnitudes, codes);
    __m256i sign = _mm256_slli_epi32(_mm256_and_si256(codes, _mm256_set1_epi32(8)), 28);
    return _mm256_xor_ps(magnitude, _mm256_castsi256_ps(sign));
}

static void gemv_mxfp4_avx2(const uint8_t *blocks, int64_t cols, int64_t row_begin, int64_t row_end,
                            const float *x, int64_t n, float *y, int64_t ldy) {
    const int64_t per_row = cols / 32;
    const __m256 magnitudes = _mm256_setr_ps(0, 0.5f, 1, 1.5f, 2, 3, 4, 6);
    const __m128i low_mask = _mm_set1_epi8(0x0F);
    for (int64_t r = row_begin; r < row_end; r++) {
        __m256 acc[8];
        for (int64_t i = 0; i < n; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t b = 0; b < per_row; b++) {
            const uint8_t *block = blocks + (r * per_row + b) * 17;
            const __m256 d = _mm256_set1_ps(mxfp4_scale(block[0]));
            const __m128i qs = _mm_loadu_si128((const __m128i *)(block + 1));
            const __m128i lo = _mm_and_si128(qs, low_mask);
            const __m128i hi = _mm_and_si128(_mm_srli_epi16(qs, 4), low_mask);
            const __m256 w0 = mxfp4_decode8(_mm256_cvtepu8_epi32(lo), magnitudes);                   // values 0...7
            const __m256 w1 = mxfp4_decode8(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)), magnitudes); // 8...15
            const __m256 w2 = mxfp4_decode8(_mm256_cvtepu8_epi32(hi), magnitudes);                   // 16...23
            const __m256 w3 = mxfp4_decode8(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)), magnitudes); // 24...31
            for (int64_t i = 0; i < n; i++) {
                const float *xb = x + i * cols + b * 32;
                __m256 p = _mm256_mul_ps(w0, _mm256_loadu_ps(xb));
                p = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + 8), p);
                p = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb + 16), p);
                p = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb + 24), p);
                acc[i] = _mm256_fmadd_ps(p, d, acc[i]);
            }
        }
        for (int64_t i = 0; i < n; i++) {
            float lanes[8];
            _mm256_storeu_ps(lanes, acc[i]);
            y[i * ldy + r] = mxfp4_reduce(lanes);
        }
    }
}
#pragma clang attribute pop
#endif

void moe_gemv_mxfp4(int level, const uint8_t *blocks, int64_t cols, int64_t row_begin, int64_t row_end,
                    const float *x, int64_t n, float *y, int64_t ldy) {
#if defined(__x86_64__)
    if (level >= MOE_KERNEL_AVX2 && n <= 8) {
        gemv_mxfp4_avx2(blocks, cols, row_begin, row_end, x, n, y, ldy);
        return;
    }
#endif
    (void)level;
    gemv_mxfp4_portable(blocks, cols, row_begin, row_end, x, n, y, ldy);
}

// The integer-dot kernel's reference (see moe_gemm_mxfp4_q8 in CKernels.h): the SIMD levels in
// avx2.c and avx512_body.h give these bits.
static const int8_t mxfp4_doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

void moe_gemm_mxfp4_q8_portable(MOE_GEMM_PARAMS(const uint8_t *blocks)) {
    (void)wscales;
    (void)sums;
    const int64_t nb = cols / MOE_KERNEL_BLOCK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = blocks + r * nb * MOE_MXFP4_BLOCK_BYTES;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *qt = q + t * cols;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *block = row + b * MOE_MXFP4_BLOCK_BYTES;
                int32_t s = 0;
                for (int j = 0; j < 16; j++) {
                    s += (int32_t)mxfp4_doubled[block[1 + j] & 0x0F] * qt[b * 32 + j];
                    s += (int32_t)mxfp4_doubled[block[1 + j] >> 4] * qt[b * 32 + j + 16];
                }
                const float scale = moe_mxfp4_half_scale(block[0]) * d[t * nb + b];
                acc[b % 8] = fmaf((float)s, scale, acc[b % 8]);
            }
            y[t * ldy + r] = moe_reduce8(acc);
        }
    }
}

/// Nonzero with `MOE_MXFP4_KERNEL=rows`: the earlier block-group kernels at every level.
static int mxfp4_rows_only(void) {
    static int cached = -1; // read once; a benign race (every thread computes the same value)
    if (cached < 0) {
        const char *v = getenv("MOE_MXFP4_KERNEL");
        cached = v && strcmp(v, "rows") == 0;
    }
    return cached;
}

/// Whether the CPU has AVX512-VBMI (vpermb, vpermt2b), which the nibble kernel needs beside the
/// AVX512-VNNI level (Cascade Lake has VNNI without it). CPUID leaf 7, ECX bit 1; cached.
static int mxfp4_has_vbmi(void) {
    static int cached = -1;
    if (cached < 0) {
        int has = 0;
#if defined(__x86_64__)
        uint32_t a = 0, b = 0, c = 0, d = 0;
        if (__get_cpuid_max(0, 0) >= 7) {
            __cpuid_count(7, 0, a, b, c, d);
            has = (c >> 1) & 1;
        }
#endif
        cached = has;
    }
    return cached;
}

/// Whether `moe_gemm_mxfp4_q8` at `level` runs the nibble kernel (mxfp4_avx512.c).
static int mxfp4_nibbles(int level) {
    return level >= MOE_KERNEL_AVX512_VNNI && !mxfp4_rows_only() && mxfp4_has_vbmi();
}

const char *moe_mxfp4_kernel_name(int level) {
    if (level == MOE_KERNEL_PORTABLE) return "portable";
    return mxfp4_nibbles(level) ? "nibbles" : "rows";
}

void moe_gemm_mxfp4_q8_rows(int level, const uint8_t *blocks, int64_t cols, int64_t row_begin, int64_t row_end,
                            const int8_t *q, const float *d, const int32_t *sums, int64_t n, float *y, int64_t ldy) {
    switch (level) {
#if defined(__x86_64__)
    case MOE_KERNEL_AVX512_VNNI: moe_gemm_mxfp4_q8_avx512vnni(blocks, 0, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
    case MOE_KERNEL_AVX512: moe_gemm_mxfp4_q8_avx512(blocks, 0, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
    case MOE_KERNEL_AVX2: moe_gemm_mxfp4_q8_avx2(blocks, 0, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
#endif
    default: moe_gemm_mxfp4_q8_portable(blocks, 0, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
    }
}

void moe_gemm_mxfp4_q8(int level, const uint8_t *blocks, int64_t cols, int64_t row_begin, int64_t row_end,
                       const int8_t *q, const float *d, const int32_t *sums, int64_t n, float *y, int64_t ldy) {
#if defined(__x86_64__)
    if (mxfp4_nibbles(level) && moe_gemm_mxfp4_q8_avx512vbmi(blocks, 0, cols, row_begin, row_end, q, d, sums, n, y, ldy)) return;
#endif
    moe_gemm_mxfp4_q8_rows(level, blocks, cols, row_begin, row_end, q, d, sums, n, y, ldy);
}
