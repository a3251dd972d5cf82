// Integer-dot products of GGUF K-quant weights (Q2_K, Q4_K, Q5_K, Q6_K) with activations quantised to
// Q8_K, as llama.cpp's CPU backend computes them (each type's vec_dot_type is Q8_K).
//
// Per 256-weight super-block the integer part is exact in int32 (at most 63·31·127·256 < 2³¹), so
// every level computes the same integers; the float steps are fixed (see CKernels.h) and scalar,
// so results are bit-identical across levels, thread splits and batch sizes.
#include "CKernels.h"
#include "internal.h"

#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { QK = 256, Q2K_BYTES = 84, Q4K_BYTES = 144, Q5K_BYTES = 176, Q6K_BYTES = 210 };

/// The little-endian IEEE half at `p` as a float, exact (`moe_f16_to_f32`).
static inline float half_to_float(const uint8_t *p) { return moe_f16_to_f32((uint16_t)(p[0] | (p[1] << 8))); }

/// The 6-bit scale and min of sub-block j (0..<8) of a Q4_K / Q5_K super-block (llama.cpp's get_scale_min_k4).
static inline void scale_min(int j, const uint8_t *s, int32_t *sc, int32_t *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

void moe_quantize_q8_K(const float *x, int64_t n, int64_t cols, int8_t *q, float *d, int32_t *bsums) {
    const int64_t blocks = cols / QK;
    for (int64_t t = 0; t < n; t++) {
        for (int64_t b = 0; b < blocks; b++) {
            const float *src = x + t * cols + b * QK;
            int8_t *dst = q + t * cols + b * QK;
            int32_t *bs = bsums + (t * blocks + b) * 16;
            float amax = 0, extreme = 0;
            for (int i = 0; i < QK; i++) {
                if (fabsf(src[i]) > amax) { amax = fabsf(src[i]); extreme = src[i]; }
            }
            if (amax == 0) {
                memset(dst, 0, QK);
                memset(bs, 0, 16 * sizeof(int32_t));
                d[t * blocks + b] = 0;
                continue;
            }
            // As llama.cpp's quantize_row_q8_K: the scale maps the extreme value to -127 (so the
            // other sign may reach 128, clamped to 127), rounding half to even.
            const float iscale = -127.0f / extreme;
            for (int g = 0; g < 16; g++) {
                int32_t sum = 0;
                for (int i = 0; i < 16; i++) {
                    long v = lrintf(iscale * src[16 * g + i]);
                    if (v > 127) v = 127;
                    dst[16 * g + i] = (int8_t)v;
                    sum += (int32_t)v;
                }
                bs[g] = sum;
            }
            d[t * blocks + b] = 1.0f / iscale;
        }
    }
}

/// The integer parts of one super-block: `sumi` (Σ scale · Σ q·q8) and, for the types with
/// mins, `summ` (Σ min · Σ q8).
typedef void (*superblock_fn)(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t *sumi, int32_t *summ);

/// Q2_K (low-bit expert copies, docs/LOSSY.md): 16 groups of 16 2-bit codes, 4-bit scale (low
/// nibble of scales[g]) and min (high nibble); element e's code in byte (e/128)*32 + e%32 at bits
/// 2·((e%128)/32).
static void q2K_portable(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t *sumi, int32_t *summ) {
    const uint8_t *scales = blk, *qs = blk + 16;
    int32_t groups[16] = {0};
    for (int e = 0; e < QK; e++) groups[e / 16] += ((qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3) * q8[e];
    int32_t si = 0, sm = 0;
    for (int g = 0; g < 16; g++) {
        si += (scales[g] & 0x0F) * groups[g];
        sm += (scales[g] >> 4) * bs[g];
    }
    *sumi = si;
    *summ = sm;
}

static void q4K_portable(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t *sumi, int32_t *summ) {
    const uint8_t *scales = blk + 4, *qs = blk + 16;
    int32_t si = 0, sm = 0;
    for (int j = 0; j < 8; j++) {
        int32_t sc, m;
        scale_min(j, scales, &sc, &m);
        const uint8_t *p = qs + (j / 2) * 32;
        const int shift = (j & 1) * 4;
        int32_t isum = 0;
        for (int l = 0; l < 32; l++) isum += ((p[l] >> shift) & 0x0F) * q8[32 * j + l];
        si += sc * isum;
        sm += m * (bs[2 * j] + bs[2 * j + 1]);
    }
    *sumi = si;
    *summ = sm;
}

static void q5K_portable(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t *sumi, int32_t *summ) {
    const uint8_t *scales = blk + 4, *qh = blk + 16, *qs = blk + 48;
    int32_t si = 0, sm = 0;
    for (int j = 0; j < 8; j++) {
        int32_t sc, m;
        scale_min(j, scales, &sc, &m);
        const uint8_t *p = qs + (j / 2) * 32;
        const int shift = (j & 1) * 4;
        int32_t isum = 0;
        for (int l = 0; l < 32; l++) isum += (((p[l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4)) * q8[32 * j + l];
        si += sc * isum;
        sm += m * (bs[2 * j] + bs[2 * j + 1]);
    }
    *sumi = si;
    *summ = sm;
}

static void q6K_portable(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t *sumi, int32_t *summ) {
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t *scales = (const int8_t *)(blk + 192);
    int32_t groups[16] = {0};
    for (int h = 0; h < 2; h++) {
        for (int k = 0; k < 4; k++) {
            for (int l = 0; l < 32; l++) {
                const int e = 128 * h + 32 * k + l;
                const int32_t v = ((ql[64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0x0F) | (((qh[32 * h + l] >> (2 * k)) & 3) << 4);
                groups[e / 16] += v * q8[e];
            }
        }
    }
    int32_t si = 0;
    // The stored values are v − 32: Σ (v − 32)·q8 = Σ v·q8 − 32·Σ q8.
    for (int g = 0; g < 16; g++) si += scales[g] * (groups[g] - 32 * bs[g]);
    *sumi = si;
    *summ = 0;
}

/// Q6_K's super-block sum split into the eight int32 lanes ggml's AVX2 `ggml_vec_dot_q6_K_q8_K` keeps
/// (lane m: the products of elements 4m..4m+3 of each 32-element chunk times their group's scale,
/// less 32·(bs[2m]·sc[2m] + bs[2m+1]·sc[2m+1])), which it turns to float and accumulates apart.
static void q6K_lanes_portable(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t lanes[8]) {
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t *scales = (const int8_t *)(blk + 192);
    for (int m = 0; m < 8; m++) lanes[m] = -32 * (bs[2 * m] * scales[2 * m] + bs[2 * m + 1] * scales[2 * m + 1]);
    for (int h = 0; h < 2; h++) {
        for (int k = 0; k < 4; k++) {
            for (int l = 0; l < 32; l++) {
                const int e = 128 * h + 32 * k + l;
                const int32_t v = ((ql[64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0x0F) | (((qh[32 * h + l] >> (2 * k)) & 3) << 4);
                lanes[(l / 4) % 8] += scales[e / 16] * v * q8[e];
            }
        }
    }
}

#if defined(__x86_64__)
#pragma clang attribute push (__attribute__((target("avx2,fma"))), apply_to = function)
static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

/// Q4_K (is5 = 0) and Q5_K (is5 = 1): nibbles (plus the fifth bit) against Q8_K with vpmaddubsw, the
/// sub-block scale applied by vpmaddwd.
static inline __attribute__((always_inline)) void q45K_avx2(int is5, const uint8_t *blk, const int8_t *q8, const int32_t *bs,
                                                             int32_t *sumi, int32_t *summ) {
    const uint8_t *scales = blk + 4, *qh = blk + 16, *qs = blk + (is5 ? 48 : 16);
    const __m256i mask = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const __m256i hbits = is5 ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    __m256i acc = _mm256_setzero_si256();
    int32_t sm = 0;
    for (int j2 = 0; j2 < 4; j2++) {
        int32_t sc0, m0, sc1, m1;
        scale_min(2 * j2, scales, &sc0, &m0);
        scale_min(2 * j2 + 1, scales, &sc1, &m1);
        const __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * j2));
        __m256i lo = _mm256_and_si256(raw, mask), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
        if (is5) {
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j2), one), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j2 + 1), one), 4));
        }
        const __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(q8 + 64 * j2)));
        const __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 64 * j2 + 32)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(plo, _mm256_set1_epi16((short)sc0)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(phi, _mm256_set1_epi16((short)sc1)));
        sm += m0 * (bs[4 * j2] + bs[4 * j2 + 1]) + m1 * (bs[4 * j2 + 2] + bs[4 * j2 + 3]);
    }
    *sumi = hsum_epi32(acc);
    *summ = sm;
}

static void q4K_avx2(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t *sumi, int32_t *summ) {
    q45K_avx2(0, blk, q8, bs, sumi, summ);
}

static void q5K_avx2(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t *sumi, int32_t *summ) {
    q45K_avx2(1, blk, q8, bs, sumi, summ);
}

static void q2K_avx2(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t *sumi, int32_t *summ) {
    const uint8_t *scales = blk, *qs = blk + 16;
    const __m256i three = _mm256_set1_epi8(3);
    __m256i acc = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
        const __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * h));
        for (int k = 0; k < 4; k++) {
            // Elements 128h + 32k + l, l < 32: groups g (l < 16) and g + 1.
            const __m256i codes = _mm256_and_si256(_mm256_srli_epi16(raw, 2 * k), three);
            const __m256i p = _mm256_maddubs_epi16(codes, _mm256_loadu_si256((const __m256i *)(q8 + 128 * h + 32 * k)));
            const int g = 8 * h + 2 * k;
            const __m256i sc = _mm256_set_m128i(_mm_set1_epi16(scales[g + 1] & 0x0F), _mm_set1_epi16(scales[g] & 0x0F));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc));
        }
    }
    int32_t sm = 0;
    for (int g = 0; g < 16; g++) sm += (scales[g] >> 4) * bs[g];
    *sumi = hsum_epi32(acc);
    *summ = sm;
}

/// `q6K_lanes_portable` with AVX2: the lanes of `q6K_avx2`'s accumulator, each less its offset.
static void q6K_lanes_avx2(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t lanes[8]) {
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t *scales = (const int8_t *)(blk + 192);
    const __m256i mask = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3);
    __m256i acc = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
        const __m256i hv = _mm256_loadu_si256((const __m256i *)(qh + 32 * h));
        for (int k = 0; k < 4; k++) {
            const __m256i lv = _mm256_loadu_si256((const __m256i *)(ql + 64 * h + 32 * (k & 1)));
            const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(lv, 4 * (k >> 1)), mask);
            const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 2 * k), three), 4);
            const __m256i p = _mm256_maddubs_epi16(_mm256_or_si256(lo, hi), _mm256_loadu_si256((const __m256i *)(q8 + 128 * h + 32 * k)));
            const int g = 8 * h + 2 * k; // int16 lanes 0-7: group g, 8-15: group g + 1
            const __m256i sc = _mm256_set_m128i(_mm_set1_epi16(scales[g + 1]), _mm_set1_epi16(scales[g]));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc));
        }
    }
    _mm256_storeu_si256((__m256i *)lanes, acc);
    for (int m = 0; m < 8; m++) lanes[m] -= 32 * (bs[2 * m] * scales[2 * m] + bs[2 * m + 1] * scales[2 * m + 1]);
}

static void q6K_avx2(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t *sumi, int32_t *summ) {
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t *scales = (const int8_t *)(blk + 192);
    const __m256i mask = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3);
    __m256i acc = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
        const __m256i hv = _mm256_loadu_si256((const __m256i *)(qh + 32 * h));
        for (int k = 0; k < 4; k++) {
            const __m256i lv = _mm256_loadu_si256((const __m256i *)(ql + 64 * h + 32 * (k & 1)));
            const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(lv, 4 * (k >> 1)), mask);
            const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 2 * k), three), 4);
            const __m256i p = _mm256_maddubs_epi16(_mm256_or_si256(lo, hi), _mm256_loadu_si256((const __m256i *)(q8 + 128 * h + 32 * k)));
            const int g = 8 * h + 2 * k; // int16 lanes 0-7: group g, 8-15: group g + 1
            const __m256i sc = _mm256_set_m128i(_mm_set1_epi16(scales[g + 1]), _mm_set1_epi16(scales[g]));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc));
        }
    }
    int32_t offset = 0;
    for (int g = 0; g < 16; g++) offset += scales[g] * bs[g];
    *sumi = hsum_epi32(acc) - 32 * offset;
    *summ = 0;
}
#pragma clang attribute pop
#endif

int moe_gemm_kquant_q8_K(int level, int type, const uint8_t *w, int64_t cols, int64_t row_begin, int64_t row_end,
                         const int8_t *q, const float *d, const int32_t *bsums, int64_t n, float *y, int64_t ldy) {
    superblock_fn fn;
    int64_t bytes;
    // d at byte 0 (Q4_K, Q5_K, with dmin at 2) or 208 (Q6_K), as float16.
    int64_t d_offset, dmin_offset;
    switch (type) {
    case 10: fn = q2K_portable; bytes = Q2K_BYTES; d_offset = 80; dmin_offset = 82; break;
    case 12: fn = q4K_portable; bytes = Q4K_BYTES; d_offset = 0; dmin_offset = 2; break;
    case 13: fn = q5K_portable; bytes = Q5K_BYTES; d_offset = 0; dmin_offset = 2; break;
    case 14: fn = q6K_portable; bytes = Q6K_BYTES; d_offset = 208; dmin_offset = -1; break;
    default: return 0;
    }
#if defined(__x86_64__)
    if (level >= MOE_KERNEL_AVX2) fn = type == 10 ? q2K_avx2 : (type == 12 ? q4K_avx2 : (type == 13 ? q5K_avx2 : q6K_avx2));
#else
    (void)level;
#endif
    const int64_t nb = cols / QK;
    if (type == 14) {
        // Q6_K as ggml's AVX2 kernel sums it: eight float lanes, lane m += d·(float)lane_m per
        // super-block, then hsum_float_8 (the order moe_reduce8 keeps). One exact int32 sum per
        // super-block times d differs from it in the last bits, which a near-tied router choice
        // can follow (qwen3moe-Q6_K, issue 21).
        void (*lanes_fn)(const uint8_t *, const int8_t *, const int32_t *, int32_t *) = q6K_lanes_portable;
#if defined(__x86_64__)
        if (level >= MOE_KERNEL_AVX2) lanes_fn = q6K_lanes_avx2;
#endif
        for (int64_t r = row_begin; r < row_end; r++) {
            const uint8_t *row = w + r * nb * bytes;
            for (int64_t t = 0; t < n; t++) {
                float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (int64_t b = 0; b < nb; b++) {
                    const uint8_t *blk = row + b * bytes;
                    int32_t lanes[8];
                    lanes_fn(blk, q + t * cols + b * QK, bsums + (t * nb + b) * 16, lanes);
                    const float db = half_to_float(blk + d_offset) * d[t * nb + b];
                    for (int m = 0; m < 8; m++) acc[m] = fmaf(db, (float)lanes[m], acc[m]);
                }
                y[t * ldy + r] = moe_reduce8(acc);
            }
        }
        return 1;
    }
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = w + r * nb * bytes;
        for (int64_t t = 0; t < n; t++) {
            float acc = 0;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = row + b * bytes;
                int32_t sumi, summ;
                fn(blk, q + t * cols + b * QK, bsums + (t * nb + b) * 16, &sumi, &summ);
                const float d8 = d[t * nb + b];
                acc = fmaf(half_to_float(blk + d_offset) * d8, (float)sumi, acc);
                if (dmin_offset >= 0) acc = fmaf(-half_to_float(blk + dmin_offset) * d8, (float)summ, acc);
            }
            y[t * ldy + r] = acc;
        }
    }
    return 1;
}
