// GGUF Q8_0 weights against 8-bit activation blocks (issue 22 item 2), on the blocks as the file
// stores them (`block_q8_0`: a float16 scale, then 32 int8 weights; 34 bytes), no conversion.
//
// The canonical arithmetic of CKernels.h with block scales, as for q4: s_b = Σ w_i · q_i exact in
// int32, acc[b mod 8] = fma((float)s_b, d_w · d_x, acc[b mod 8]), the canonical final sum. The
// AVX2 kernel serves every x86 level above portable (the same bits by construction).
#include "CKernels.h"
#include "internal.h"
#include <string.h>

/// Bytes of one `block_q8_0`.
#define Q8_0_BLOCK_BYTES 34

/// An IEEE half (raw bits) as float, exactly (subnormals included).
static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF, bits;
    if (exponent == 0x1F) {
        bits = sign | 0x7F800000u | (mantissa << 13);
    } else if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else {
            uint32_t shift = 0;
            while ((mantissa & 0x400) == 0) { mantissa <<= 1; shift++; }
            bits = sign | ((127 - 15 + 1 - shift) << 23) | ((mantissa & 0x3FF) << 13);
        }
    } else {
        bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float block_scale(const uint8_t *block) {
    uint16_t h;
    memcpy(&h, block, 2);
    return half_to_float(h);
}

static void q8_0_portable(const uint8_t *w, int64_t cols, int64_t row_begin, int64_t row_end,
                          const int8_t *q, const float *d, int64_t n, float *y, int64_t ldy) {
    const int64_t nb = cols / MOE_KERNEL_BLOCK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = w + r * nb * Q8_0_BLOCK_BYTES;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *qt = q + t * cols;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *block = row + b * Q8_0_BLOCK_BYTES;
                const int8_t *wv = (const int8_t *)(block + 2);
                int32_t s = 0;
                for (int i = 0; i < 32; i++) s += (int32_t)wv[i] * qt[b * 32 + i];
                acc[b % 8] = __builtin_fmaf((float)s, block_scale(block) * d[t * nb + b], acc[b % 8]);
            }
            y[t * ldy + r] = moe_reduce8(acc);
        }
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)

/// Eight vectors of eight int32 partial sums (one per block) → the eight block sums, in order.
static inline __m256i q8_0_sum_blocks(const __m256i p[8]) {
    const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    const __m256i q0 = _mm256_hadd_epi32(h01, h23), q1 = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20), _mm256_permute2x128_si256(q0, q1, 0x31));
}

/// The canonical sum of the eight lanes: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
static inline float q8_0_reduce(__m256 acc) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/// Eight blocks (`blocks`: 8 × 34 bytes) against one token's eight activation blocks, `ws` the
/// blocks' scales: lane k of the result accumulates block k's exact sum times d_w · d_x.
static inline __attribute__((always_inline)) __m256 q8_0_group(const uint8_t *blocks, const float *ws, const int8_t *qt,
                                                               const float *dt, __m256 acc) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i p[8];
    for (int k = 0; k < 8; k++) {
        const __m256i w = _mm256_loadu_si256((const __m256i *)(blocks + k * Q8_0_BLOCK_BYTES + 2));
        const __m256i a = _mm256_loadu_si256((const __m256i *)(qt + 32 * k));
        // |w| is unsigned and w's sign moves onto the activation (|w| ≤ 128, |q| ≤ 127: no s16 overflow).
        p[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)), ones);
    }
    const __m256i s = q8_0_sum_blocks(p);
    const __m256 scale = _mm256_mul_ps(_mm256_loadu_ps(ws), _mm256_loadu_ps(dt));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc);
}

/// Rows at most this wide have their block scales widened once per row on the stack (64 KiB
/// columns); wider rows widen them per group.
#define Q8_0_STACK_BLOCKS 2048

/// The float scales of eight blocks at `blocks` (vcvtph2ps: exact), into `out[8]`.
static inline void q8_0_scales8(const uint8_t *blocks, float *out) {
    uint16_t h[8];
    for (int k = 0; k < 8; k++) memcpy(&h[k], blocks + k * Q8_0_BLOCK_BYTES, 2);
    _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)));
}

static void q8_0_avx2(const uint8_t *w, int64_t cols, int64_t row_begin, int64_t row_end,
                      const int8_t *q, const float *d, int64_t n, float *y, int64_t ldy) {
    const int64_t nb = cols / MOE_KERNEL_BLOCK, groups = nb / 8, rem = nb % 8;
    float scales[Q8_0_STACK_BLOCKS + 8];
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = w + r * nb * Q8_0_BLOCK_BYTES;
        // The last, partial group through zero-padded copies: a missing block has weights and scale
        // 0, so it adds exactly nothing, as in the portable kernel that skips it.
        uint8_t tail[8 * Q8_0_BLOCK_BYTES] = {0};
        float tail_scales[8];
        if (rem) {
            memcpy(tail, row + groups * 8 * Q8_0_BLOCK_BYTES, (size_t)(rem * Q8_0_BLOCK_BYTES));
            q8_0_scales8(tail, tail_scales);
        }
        // Each block's float16 scale widened once per row, not once per token.
        const int cached = nb <= Q8_0_STACK_BLOCKS;
        if (cached) for (int64_t g = 0; g < groups; g++) q8_0_scales8(row + g * 8 * Q8_0_BLOCK_BYTES, scales + g * 8);
        for (int64_t t = 0; t < n; t++) {
            const int8_t *qt = q + t * cols;
            const float *dt = d + t * nb;
            __m256 acc = _mm256_setzero_ps();
            for (int64_t g = 0; g < groups; g++) {
                float own[8];
                const float *ws = cached ? scales + g * 8 : (q8_0_scales8(row + g * 8 * Q8_0_BLOCK_BYTES, own), own);
                acc = q8_0_group(row + g * 8 * Q8_0_BLOCK_BYTES, ws, qt + g * 256, dt + g * 8, acc);
            }
            if (rem) {
                int8_t qb[256] = {0};
                float db[8] = {0};
                memcpy(qb, qt + groups * 256, (size_t)(rem * 32));
                memcpy(db, dt + groups * 8, (size_t)rem * sizeof(float));
                acc = q8_0_group(tail, tail_scales, qb, db, acc);
            }
            y[t * ldy + r] = q8_0_reduce(acc);
        }
    }
}

#pragma clang attribute pop
#endif

void moe_gemm_q8_0_q8(int level, const uint8_t *blocks, int64_t cols, int64_t row_begin, int64_t row_end,
                      const int8_t *q, const float *d, int64_t n, float *y, int64_t ldy) {
#if defined(__x86_64__)
    if (level >= MOE_KERNEL_AVX2) { q8_0_avx2(blocks, cols, row_begin, row_end, q, d, n, y, ldy); return; }
#endif
    (void)level;
    q8_0_portable(blocks, cols, row_begin, row_end, q, d, n, y, ldy);
}
