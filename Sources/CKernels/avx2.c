// AVX2 + FMA kernels: vpmaddubsw (u8 × s8 → s16 pairs) and vpmaddwd on 256-bit vectors.
// Compiled for AVX2 by the target attribute below, whatever the package's flags; called only
// when moe_kernels_detect() says the CPU has it.
#if defined(__x86_64__)
#include "internal.h"
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#pragma clang attribute push (__attribute__((target("avx2,fma"))), apply_to = function)

/// 16 q4 bytes as 32 unsigned nibbles in element order: low nibbles (elements 0-15), then high (16-31).
static inline __m256i expand_q4(const uint8_t *p) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)p);
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

/// One MXFP4 block's 32 nibbles (at `p`, past the exponent byte) as the doubled e2m1 values plus
/// 12 in element order, unsigned bytes 0...24: a pshufb of llama.cpp's `kvalues_mxfp4` table
/// offset like q4's nibbles, so vpmaddubsw takes them as they are and the block sums remove 12·Σq.
static inline __m256i expand_mxfp4(const uint8_t *p) {
    const __m256i table = _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,
                                           12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
    return _mm256_shuffle_epi8(table, expand_q4(p));
}

/// The half scales of eight whole MXFP4 blocks at `p` (as `moe_mxfp4_half_scales`): one gather
/// of the exponent bytes, the rare subnormal and NaN exponents the scalar way.
static inline void half_scales8(const uint8_t *p, float out[8]) {
    const __m256i offsets = _mm256_setr_epi32(0, 17, 34, 51, 68, 85, 102, 119);
    const __m256i e = _mm256_and_si256(_mm256_i32gather_epi32((const int *)p, offsets, 1), _mm256_set1_epi32(0xFF));
    // e in 2...254 (all but the subnormal and NaN cases): 2^(e-128) is the float with exponent field e - 1.
    const __m256i low = _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e), nan = _mm256_cmpeq_epi32(e, _mm256_set1_epi32(255));
    if (_mm256_testz_si256(_mm256_or_si256(low, nan), _mm256_or_si256(low, nan))) {
        _mm256_storeu_si256((__m256i *)out, _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23));
    } else {
        moe_mxfp4_half_scales(p, 8, out);
    }
}

/// Eight vectors of eight int32 partial sums (one vector per block) → the eight block sums, in order.
static inline __m256i sum_blocks(const __m256i p[8]) {
    const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    const __m256i q0 = _mm256_hadd_epi32(h01, h23), q1 = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20), _mm256_permute2x128_si256(q0, q1, 0x31));
}

/// The canonical sum of the eight lanes: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
static inline float reduce(__m256 acc) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/// One group of eight blocks of one token against unpacked weights `w`: acc += s · scale per block lane.
/// `kind` 0: q4 (w unsigned nibbles, the −8 offset through the block sums); 1: int8 (w signed);
/// 2: MXFP4 (w the doubled e2m1 values + 12, the offset through the block sums; `ws` the blocks' half scales).
static inline __attribute__((always_inline)) __m256 group(int kind, const __m256i w[8], const int8_t *qt, const float *dt,
                                                          const int32_t *st, const float *ws, __m256 acc) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i p[8];
    for (int k = 0; k < 8; k++) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(qt + 32 * k));
        if (kind != 1) {
            p[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(w[k], a), ones);
        } else {
            // |w| is unsigned and w's sign moves onto the activation (|w| ≤ 128, |q| ≤ 127: no s16 overflow).
            p[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w[k], w[k]), _mm256_sign_epi8(a, w[k])), ones);
        }
    }
    __m256i s = sum_blocks(p);
    __m256 scale = _mm256_loadu_ps(dt);
    if (kind == 0) s = _mm256_sub_epi32(s, _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)st), 3));
    if (kind == 2) {
        const __m256i sq = _mm256_loadu_si256((const __m256i *)st);
        s = _mm256_sub_epi32(s, _mm256_add_epi32(_mm256_slli_epi32(sq, 3), _mm256_slli_epi32(sq, 2)));
    }
    if (kind != 1) scale = _mm256_mul_ps(_mm256_loadu_ps(ws), scale);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc);
}

/// Weight row `row` against tokens t0..<t0+T; T a constant at every call site.
static inline __attribute__((always_inline)) void tile(int kind, int T, const uint8_t *row, const float *rs, int64_t cols,
                                                       const int8_t *q, const float *d, const int32_t *sums,
                                                       int64_t t0, float *y, int64_t ldy, float row_scale) {
    const int64_t nb = cols / 32, groups = nb / 8, rem = nb % 8;
    const int64_t wbytes = kind == 0 ? 16 : (kind == 1 ? 32 : MOE_MXFP4_BLOCK_BYTES); // bytes per block
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t g = 0; g < groups; g++) {
        __m256i w[8];
        for (int k = 0; k < 8; k++) {
            const uint8_t *p = row + (g * 8 + k) * wbytes;
            w[k] = kind == 0 ? expand_q4(p) : (kind == 1 ? _mm256_loadu_si256((const __m256i *)p) : expand_mxfp4(p + 1));
        }
        float hs[8];
        if (kind == 2) half_scales8(row + g * 8 * wbytes, hs);
        for (int t = 0; t < T; t++) {
            const int64_t tt = t0 + t;
            acc[t] = group(kind, w, q + tt * cols + g * 256, d + tt * nb + g * 8, sums + tt * nb + g * 8,
                           kind == 0 ? rs + g * 8 : hs, acc[t]);
        }
    }
    if (rem) {
        // The last, partial group through zero-padded copies: a missing block has q = 0, sum 0 and
        // scale 0, so it adds exactly nothing, as in the portable kernel that skips it.
        uint8_t wb[8 * 32] = {0};
        float wsb[8] = {0};
        memcpy(wb, row + groups * 8 * wbytes, (size_t)(rem * wbytes));
        if (kind == 0) memcpy(wsb, rs + groups * 8, (size_t)rem * sizeof(float));
        if (kind == 2) moe_mxfp4_half_scales(wb, rem, wsb);
        __m256i w[8];
        for (int k = 0; k < 8; k++) {
            w[k] = kind == 0 ? expand_q4(wb + k * 16)
                             : (kind == 1 ? _mm256_loadu_si256((const __m256i *)(wb + k * 32)) : expand_mxfp4(wb + k * 17 + 1));
        }
        for (int t = 0; t < T; t++) {
            const int64_t tt = t0 + t;
            int8_t qb[256] = {0};
            float db[8] = {0};
            int32_t sb[8] = {0};
            memcpy(qb, q + tt * cols + groups * 256, (size_t)(rem * 32));
            memcpy(db, d + tt * nb + groups * 8, (size_t)rem * sizeof(float));
            memcpy(sb, sums + tt * nb + groups * 8, (size_t)rem * sizeof(int32_t));
            acc[t] = group(kind, w, qb, db, sb, wsb, acc[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        const float v = reduce(acc[t]);
        y[(t0 + t) * ldy] = kind == 1 ? v * row_scale : v;
    }
}

static inline __attribute__((always_inline)) void gemm(int kind, const uint8_t *w, const float *wscales, int64_t cols,
                                                       int64_t row_begin, int64_t row_end, const int8_t *q, const float *d,
                                                       const int32_t *sums, int64_t n, float *y, int64_t ldy) {
    const int64_t nb = cols / 32;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = kind == 0 ? w + r * nb * 16 : (kind == 1 ? w + r * cols : w + r * nb * MOE_MXFP4_BLOCK_BYTES);
        const float *rs = kind == 0 ? wscales + r * nb : 0;
        const float row_scale = kind == 1 ? wscales[r] : 0;
        int64_t t0 = 0;
        for (; t0 + 4 <= n; t0 += 4) tile(kind, 4, row, rs, cols, q, d, sums, t0, y + r, ldy, row_scale);
        switch (n - t0) {
        case 3: tile(kind, 3, row, rs, cols, q, d, sums, t0, y + r, ldy, row_scale); break;
        case 2: tile(kind, 2, row, rs, cols, q, d, sums, t0, y + r, ldy, row_scale); break;
        case 1: tile(kind, 1, row, rs, cols, q, d, sums, t0, y + r, ldy, row_scale); break;
        default: break;
        }
    }
}

void moe_quantize_q8_avx2(const float *x, int64_t n, int64_t cols, int8_t *q, float *d, int32_t *sums) {
    const int64_t blocks = cols / 32;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t t = 0; t < n; t++) {
        for (int64_t b = 0; b < blocks; b++) {
            const float *src = x + t * cols + b * 32;
            const __m256 v0 = _mm256_loadu_ps(src), v1 = _mm256_loadu_ps(src + 8);
            const __m256 v2 = _mm256_loadu_ps(src + 16), v3 = _mm256_loadu_ps(src + 24);
            // max|x|: exact whatever the order.
            __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                     _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            const float amax = _mm_cvtss_f32(m4);
            const float scale = amax / 127.0f;
            const float inverse = amax != 0 ? 127.0f / amax : 0.0f; // llama.cpp's: one rounding, not two
            const __m256 iv = _mm256_set1_ps(inverse);
            // cvtps2dq rounds half to even (the default MXCSR mode), as lrintf; |x·inverse| ≤ 127 up to rounding.
            const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
            __m256i i0 = _mm256_min_epi32(hi, _mm256_max_epi32(lo, _mm256_cvtps_epi32(_mm256_mul_ps(v0, iv))));
            __m256i i1 = _mm256_min_epi32(hi, _mm256_max_epi32(lo, _mm256_cvtps_epi32(_mm256_mul_ps(v1, iv))));
            __m256i i2 = _mm256_min_epi32(hi, _mm256_max_epi32(lo, _mm256_cvtps_epi32(_mm256_mul_ps(v2, iv))));
            __m256i i3 = _mm256_min_epi32(hi, _mm256_max_epi32(lo, _mm256_cvtps_epi32(_mm256_mul_ps(v3, iv))));
            const __m256i total = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
            s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
            // Pack 32 int32 to 32 int8 in element order (packs work within 128-bit lanes: fix the order after).
            const __m256i w01 = _mm256_packs_epi32(i0, i1), w23 = _mm256_packs_epi32(i2, i3);
            __m256i bytes = _mm256_packs_epi16(w01, w23);
            bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(q + t * cols + b * 32), bytes);
            d[t * blocks + b] = scale;
            sums[t * blocks + b] = _mm_cvtsi128_si32(s4);
        }
    }
}

void moe_gemm_q4_q8_avx2(MOE_GEMM_PARAMS(const uint8_t *blocks)) {
    gemm(0, blocks, wscales, cols, row_begin, row_end, q, d, sums, n, y, ldy);
}

/// Eight float16 values (IEEE binary16 bits) widened to float32 exactly, without F16C (which this
/// level's CPUID check does not require): the exponent rebased by integer adds, Inf/NaN rebased
/// once more, subnormals (exponent 0) as 2^-14 · (1 + m/1024) − 2^-14 = m · 2^-24, exact in float32.
static inline __m256 half8_to_float(const uint16_t *p) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    __m256i o = _mm256_slli_epi32(_mm256_and_si256(h, _mm256_set1_epi32(0x7FFF)), 13);
    const __m256i e = _mm256_and_si256(o, _mm256_set1_epi32(0x0F800000));
    o = _mm256_add_epi32(o, _mm256_set1_epi32(112 << 23));
    o = _mm256_add_epi32(o, _mm256_and_si256(_mm256_cmpeq_epi32(e, _mm256_set1_epi32(0x0F800000)), _mm256_set1_epi32(112 << 23)));
    const __m256 subnormal = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_add_epi32(o, _mm256_set1_epi32(1 << 23))), _mm256_set1_ps(0x1p-14f));
    const __m256 f = _mm256_blendv_ps(_mm256_castsi256_ps(o), subnormal, _mm256_castsi256_ps(_mm256_cmpeq_epi32(e, _mm256_setzero_si256())));
    return _mm256_or_ps(f, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(h, _mm256_set1_epi32(0x8000)), 16)));
}

void moe_gemm_q4h_q8_avx2(MOE_GEMM_Q4H_PARAMS) {
    // Row by row on widened scales (this level's kernel is row by row anyway): each row's float16
    // scales widened eight at a time into a stack buffer (the heap past 1,024 blocks), then the
    // float32-scale kernel on that row alone, so the bits are `moe_gemm_q4_q8_avx2`'s.
    const int64_t nb = cols / 32;
    float local[1024];
    float *wide = nb <= 1024 ? local : (float *)malloc((size_t)nb * sizeof(float));
    if (!wide) { moe_gemm_q4h_by_rows(moe_gemm_q4_q8_avx2, blocks, hscales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return; }
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint16_t *hs = hscales + r * nb;
        int64_t b = 0;
        for (; b + 8 <= nb; b += 8) _mm256_storeu_ps(wide + b, half8_to_float(hs + b));
        for (; b < nb; b++) wide[b] = moe_f16_to_f32(hs[b]);
        gemm(0, blocks + r * nb * 16, wide, cols, 0, 1, q, d, sums, n, y + r, ldy);
    }
    if (wide != local) free(wide);
}

void moe_gemm_i8_q8_avx2(MOE_GEMM_PARAMS(const int8_t *w)) {
    gemm(1, (const uint8_t *)w, wscales, cols, row_begin, row_end, q, d, sums, n, y, ldy);
}

void moe_gemm_mxfp4_q8_avx2(MOE_GEMM_PARAMS(const uint8_t *blocks)) {
    gemm(2, blocks, wscales, cols, row_begin, row_end, q, d, sums, n, y, ldy);
}

#pragma clang attribute pop
#endif
