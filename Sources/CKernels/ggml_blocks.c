// Integer-dot products of the GGUF block types that had only the float path (issue 21 item 2), on
// the blocks as the file stores them, against 8-bit activation blocks as llama.cpp's CPU backend
// rounds them (each type's vec_dot_type):
//   32-weight blocks, Q8_0 activations (Q5_0, IQ4_NL) or Q8_1 ones (Q4_1, Q5_1: Q8_0's values
//   plus the block sum s = float16(d·Σq), which multiplies the weight block's offset m);
//   256-weight super-blocks, Q8_K activations (Q3_K, IQ4_XS), as the K-quants in kquants.c.
//
// Every level computes the same integers per block (exact in int32); the float steps are scalar
// and fixed (32-blocks: the canonical acc[b mod 8] and moe_reduce8 of CKernels.h; super-blocks:
// ggml's own order, as kquants.c's Q6_K: eight int32 lanes per super-block, lane m the products of
// elements 4m..4m+3 of every 32 times their scales, each fma'd into float lane m with d_w·d_x, then
// hsum_float_8 = moe_reduce8: ggml_vec_dot_q3_K_q8_K / ggml_vec_dot_iq4_xs_q8_K, AVX2), so results are
// bit-identical across levels, thread splits and batch sizes.
#include "CKernels.h"
#include "internal.h"

#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum {
    T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q3_K = 11, T_IQ4_NL = 20, T_IQ4_XS = 23,
    Q4_1_BYTES = 20, Q5_0_BYTES = 22, Q5_1_BYTES = 24, IQ4_NL_BYTES = 18, Q3_K_BYTES = 110, IQ4_XS_BYTES = 136,
};

/// The 16 signed values of IQ4_NL / IQ4_XS codes (the format's table).
static const int8_t iq4_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/// The little-endian IEEE half at `p` as a float, exact (`moe_f16_to_f32`).
static inline float half_at(const uint8_t *p) { return moe_f16_to_f32((uint16_t)(p[0] | (p[1] << 8))); }

static inline uint32_t u32_at(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

void moe_q8_1_block_sums(const float *x, int64_t n, int64_t cols, const int32_t *sums, float *s) {
    const int64_t nb = cols / 32;
    for (int64_t t = 0; t < n; t++) {
        for (int64_t b = 0; b < nb; b++) {
            const float *src = x + t * cols + b * 32;
            float amax = 0;
            for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(src[i]));
            // llama.cpp's Q8_1: s = float16(d · Σq) with the unrounded d = amax / 127.
            s[t * nb + b] = (float)(_Float16)((amax / 127.0f) * (float)sums[t * nb + b]);
        }
    }
}

// ---- 32-weight blocks: the integer part of one block against 32 int8 activations ----
// Q4_1 / Q5_1 / Q5_0 return Σ u·q8 with u the unsigned code (0..15 or 0..31); the caller
// applies Q5_0's −16 offset through the activation block's Σq. IQ4_NL returns Σ value·q8.

static int32_t q4_1_portable(const uint8_t *blk, const int8_t *q8) {
    const uint8_t *qs = blk + 4;
    int32_t s = 0;
    for (int j = 0; j < 16; j++) s += (qs[j] & 0x0F) * q8[j] + (qs[j] >> 4) * q8[j + 16];
    return s;
}

static inline int32_t q5_portable(const uint8_t *qh_at, const uint8_t *qs, const int8_t *q8) {
    const uint32_t qh = u32_at(qh_at);
    int32_t s = 0;
    for (int j = 0; j < 16; j++) {
        s += ((qs[j] & 0x0F) | (((qh >> j) & 1) << 4)) * q8[j];
        s += ((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) * q8[j + 16];
    }
    return s;
}

static int32_t q5_0_portable(const uint8_t *blk, const int8_t *q8) { return q5_portable(blk + 2, blk + 6, q8); }
static int32_t q5_1_portable(const uint8_t *blk, const int8_t *q8) { return q5_portable(blk + 4, blk + 8, q8); }

static int32_t iq4_nl_portable(const uint8_t *blk, const int8_t *q8) {
    const uint8_t *qs = blk + 2;
    int32_t s = 0;
    for (int j = 0; j < 16; j++) s += iq4_values[qs[j] & 0x0F] * q8[j] + iq4_values[qs[j] >> 4] * q8[j + 16];
    return s;
}

typedef int32_t (*block32_fn)(const uint8_t *blk, const int8_t *q8);

/// Rows `row_begin..<row_end` of one 32-block product with `fn` (inlined per type by its callers).
static inline __attribute__((always_inline)) void rows32(int type, block32_fn fn, int64_t bytes, const uint8_t *w, int64_t cols,
                                                         int64_t row_begin, int64_t row_end, const int8_t *q, const float *d,
                                                         const int32_t *sums, const float *s, int64_t n, float *y, int64_t ldy) {
    const int64_t nb = cols / 32;
    const int has_min = type == T_Q4_1 || type == T_Q5_1;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = w + r * nb * bytes;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *qt = q + t * cols;
            const float *dt = d + t * nb;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = row + b * bytes;
                int32_t sumi = fn(blk, qt + 32 * b);
                // Q5_0 stores code − 16: Σ (u − 16)·q8 = Σ u·q8 − 16·Σ q8.
                if (type == T_Q5_0) sumi -= 16 * sums[t * nb + b];
                acc[b % 8] = fmaf((float)sumi, half_at(blk) * dt[b], acc[b % 8]);
                if (has_min) acc[b % 8] = fmaf(half_at(blk + 2), s[t * nb + b], acc[b % 8]);
            }
            y[t * ldy + r] = moe_reduce8(acc);
        }
    }
}

// ---- 256-weight super-blocks against Q8_K: the integer part Σ scale · Σ value·q8 ----

/// The 16 signed 6-bit scales (−32..31) of a Q3_K super-block's 12 scale bytes.
static inline void q3K_scales(const uint8_t *s, int32_t out[16]) {
    for (int i = 0; i < 16; i++) {
        const int low = i < 8 ? (s[i] & 0x0F) : (s[i - 8] >> 4);
        const int high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        out[i] = (low | (high << 4)) - 32;
    }
}

/// Q3_K: element e = 128h + 32k + l has the 2-bit code (qs[32h + l] >> 2k) & 3 and the high bit
/// (hmask[l] >> (4h + k)) & 1; its value is code + 4·high − 4.
/// The super-block's sum in ggml's eight int32 lanes: lane m = Σ scale · value · q8 over the elements
/// e with e mod 32 in 4m..4m+3 (what one lane of vpmaddubsw + vpmaddwd adds up in ggml's AVX2 kernel).
static void q3K_portable(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t lanes[8]) {
    (void)bs;
    const uint8_t *hmask = blk, *qs = blk + 32;
    int32_t sc[16];
    q3K_scales(blk + 96, sc);
    for (int m = 0; m < 8; m++) lanes[m] = 0;
    for (int e = 0; e < 256; e++) {
        const int h = e / 128, k = (e % 128) / 32, l = e % 32;
        const int32_t u = ((qs[32 * h + l] >> (2 * k)) & 3) | (((hmask[l] >> (4 * h + k)) & 1) << 2);
        lanes[(e % 32) / 4] += sc[e / 16] * (u - 4) * q8[e];
    }
}

static inline int32_t iq4_xs_scale(const uint8_t *blk, int j) {
    const uint16_t high = (uint16_t)(blk[2] | (blk[3] << 8));
    return (int32_t)(((blk[4 + j / 2] >> (4 * (j % 2))) & 0x0F) | (((high >> (2 * j)) & 3) << 4)) - 32;
}

/// As `q3K_portable`: element 32j + i is the low nibble of byte 16j + i (i < 16), else the high
/// nibble of byte 16j + i − 16.
static void iq4_xs_portable(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t lanes[8]) {
    (void)bs;
    for (int m = 0; m < 8; m++) lanes[m] = 0;
    for (int j = 0; j < 8; j++) {
        const uint8_t *qs = blk + 8 + 16 * j;
        const int32_t scale = iq4_xs_scale(blk, j);
        for (int i = 0; i < 16; i++) {
            lanes[i / 4] += scale * iq4_values[qs[i] & 0x0F] * q8[32 * j + i];
            lanes[(i + 16) / 4] += scale * iq4_values[qs[i] >> 4] * q8[32 * j + i + 16];
        }
    }
}

typedef void (*superblock_fn)(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t lanes[8]);

#if defined(__x86_64__)
#pragma clang attribute push (__attribute__((target("avx2,fma,f16c"))), apply_to = function)
static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

/// The 32 codes of 16 nibble bytes in element order: low nibbles (elements 0..15), then high ones.
static inline __m256i nibbles32(const uint8_t *qs) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask));
}

/// Bit i of the little-endian uint32 at `qh` as 0x10 in byte i (the fifth bit of element i).
static inline __m256i fifth_bits(const uint8_t *qh) {
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)u32_at(qh)),
                                               _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
}


/// The IQ4 values of 32 codes, as int8 (a table lookup by vpshufb).
static inline __m256i iq4_lookup(__m256i codes) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)iq4_values));
    return _mm256_shuffle_epi8(table, codes);
}

/// vpmaddubsw of signed values v (|v| ≤ 127, never 0) and q8: |v| against q8 carrying v's sign.
static inline __m256i madd_signed(__m256i v, const int8_t *q8) {
    return _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)q8), v));
}


/// vpmaddubsw pairs of Q3_K's values (code − 4) and q8: the unsigned codes (0..7) against q8, less
/// four times q8's pair sums (exact in int16: |Σ| ≤ 7·127·2).
static inline __m256i q3K_pairs(__m256i codes, const int8_t *q8) {
    const __m256i a = _mm256_loadu_si256((const __m256i *)q8);
    const __m256i p = _mm256_maddubs_epi16(codes, a), o = _mm256_maddubs_epi16(_mm256_set1_epi8(1), a);
    return _mm256_sub_epi16(p, _mm256_slli_epi16(o, 2));
}

static void q3K_avx2(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t lanes[8]) {
    (void)bs;
    const uint8_t *hmask = blk, *qs = blk + 32;
    int32_t sc[16];
    q3K_scales(blk + 96, sc);
    const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    const __m256i hv = _mm256_loadu_si256((const __m256i *)hmask);
    __m256i acc = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
        const __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * h));
        for (int k = 0; k < 4; k++) {
            const __m256i codes = _mm256_and_si256(_mm256_srli_epi16(raw, 2 * k), three);
            const __m256i high = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 4 * h + k), one), 2);
            const __m256i p = q3K_pairs(_mm256_or_si256(codes, high), q8 + 128 * h + 32 * k);
            const int g = 8 * h + 2 * k; // int16 lanes 0-7: group g, 8-15: group g + 1
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set_m128i(_mm_set1_epi16((short)sc[g + 1]), _mm_set1_epi16((short)sc[g]))));
        }
    }
    _mm256_storeu_si256((__m256i *)lanes, acc);
}

static void iq4_xs_avx2(const uint8_t *blk, const int8_t *q8, const int32_t *bs, int32_t lanes[8]) {
    (void)bs;
    __m256i acc = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) {
        const __m256i p = madd_signed(iq4_lookup(nibbles32(blk + 8 + 16 * j)), q8 + 32 * j);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16((short)iq4_xs_scale(blk, j))));
    }
    _mm256_storeu_si256((__m256i *)lanes, acc);
}

/// Rows of one 32-block product at AVX2: each weight block decoded once for up to eight tokens
/// (its codes, or IQ4_NL's values), each token's float steps those of `rows32` in the same order.
static inline __attribute__((always_inline)) void rows32_avx2_impl(int type, int64_t bytes, const uint8_t *w, int64_t cols,
                                                                   int64_t row_begin, int64_t row_end, const int8_t *q, const float *d,
                                                                   const int32_t *sums, const float *s, int64_t n, float *y, int64_t ldy) {
    const int64_t nb = cols / 32;
    const int has_min = type == T_Q4_1 || type == T_Q5_1;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = w + r * nb * bytes;
        for (int64_t t0 = 0; t0 < n; t0 += 8) {
            const int nt = n - t0 < 8 ? (int)(n - t0) : 8;
            float acc[8][8] = {{0}};
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = row + b * bytes;
                __m256i v; // unsigned codes, or IQ4_NL's signed values
                switch (type) {
                case T_Q4_1: v = nibbles32(blk + 4); break;
                case T_Q5_0: v = _mm256_or_si256(nibbles32(blk + 6), fifth_bits(blk + 2)); break;
                case T_Q5_1: v = _mm256_or_si256(nibbles32(blk + 8), fifth_bits(blk + 4)); break;
                default: v = iq4_lookup(nibbles32(blk + 2)); break;
                }
                const __m256i magnitude = type == T_IQ4_NL ? _mm256_sign_epi8(v, v) : v;
                const float dw = half_at(blk), mw = has_min ? half_at(blk + 2) : 0;
                for (int k = 0; k < nt; k++) {
                    const int64_t t = t0 + k;
                    __m256i a = _mm256_loadu_si256((const __m256i *)(q + t * cols + 32 * b));
                    if (type == T_IQ4_NL) a = _mm256_sign_epi8(a, v);
                    int32_t sumi = hsum_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, a), ones));
                    if (type == T_Q5_0) sumi -= 16 * sums[t * nb + b];
                    acc[k][b % 8] = fmaf((float)sumi, dw * d[t * nb + b], acc[k][b % 8]);
                    if (has_min) acc[k][b % 8] = fmaf(mw, s[t * nb + b], acc[k][b % 8]);
                }
            }
            for (int k = 0; k < nt; k++) y[(t0 + k) * ldy + r] = moe_reduce8(acc[k]);
        }
    }
}

/// Rows of one Q3_K / IQ4_XS product at AVX2 for several tokens: each super-block decoded once
/// (eight vectors of codes or values and their scales) for up to eight tokens, each token's
/// integer lanes those of `q3K_avx2` / `iq4_xs_avx2` and its float steps those of the one-token loop.
static inline __attribute__((always_inline)) void superrows_avx2(int type, int64_t bytes, int64_t d_offset, const uint8_t *w, int64_t cols,
                                                                 int64_t row_begin, int64_t row_end, const int8_t *q, const float *d,
                                                                 const int32_t *bsums, int64_t n, float *y, int64_t ldy) {
    const int64_t nb = cols / 256;
    const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = w + r * nb * bytes;
        for (int64_t t0 = 0; t0 < n; t0 += 8) {
            const int nt = n - t0 < 8 ? (int)(n - t0) : 8;
            __m256 acc[8];
            for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = row + b * bytes;
                // v[j]: elements 32j..32j+31 (unsigned Q3_K codes, or IQ4_XS's signed values); sc[j] their int16 scales.
                __m256i v[8], mag[8], sc[8];
                int32_t scales[16];
                if (type == T_Q3_K) {
                    q3K_scales(blk + 96, scales);
                    const __m256i hv = _mm256_loadu_si256((const __m256i *)blk);
                    for (int h = 0; h < 2; h++) {
                        const __m256i raw = _mm256_loadu_si256((const __m256i *)(blk + 32 + 32 * h));
                        for (int k = 0; k < 4; k++) {
                            const int j = 4 * h + k, g = 2 * j;
                            const __m256i codes = _mm256_and_si256(_mm256_srli_epi16(raw, 2 * k), three);
                            const __m256i high = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, j), one), 2);
                            v[j] = mag[j] = _mm256_or_si256(codes, high);
                            sc[j] = _mm256_set_m128i(_mm_set1_epi16((short)scales[g + 1]), _mm_set1_epi16((short)scales[g]));
                        }
                    }
                } else {
                    for (int j = 0; j < 8; j++) {
                        v[j] = iq4_lookup(nibbles32(blk + 8 + 16 * j));
                        mag[j] = _mm256_sign_epi8(v[j], v[j]);
                        sc[j] = _mm256_set1_epi16((short)iq4_xs_scale(blk, j));
                    }
                }
                const float dw = half_at(blk + d_offset);
                for (int k = 0; k < nt; k++) {
                    const int64_t t = t0 + k;
                    const int8_t *q8 = q + t * cols + b * 256;
                    __m256i sum = _mm256_setzero_si256();
                    for (int j = 0; j < 8; j++) {
                        __m256i p;
                        if (type == T_Q3_K) {
                            p = q3K_pairs(mag[j], q8 + 32 * j);
                        } else {
                            const __m256i a = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(q8 + 32 * j)), v[j]);
                            p = _mm256_maddubs_epi16(mag[j], a);
                        }
                        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, sc[j]));
                    }
                    acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * d[t * nb + b]), _mm256_cvtepi32_ps(sum), acc[k]);
                }
            }
            for (int k = 0; k < nt; k++) {
                float lanes[8];
                _mm256_storeu_ps(lanes, acc[k]);
                y[(t0 + k) * ldy + r] = moe_reduce8(lanes);
            }
        }
    }
}

static void superrows_avx2_dispatch(int type, int64_t bytes, int64_t d_offset, const uint8_t *w, int64_t cols, int64_t rb, int64_t re,
                                    const int8_t *q, const float *d, const int32_t *bsums, int64_t n, float *y, int64_t ldy) {
    if (type == T_Q3_K) superrows_avx2(T_Q3_K, bytes, d_offset, w, cols, rb, re, q, d, bsums, n, y, ldy);
    else superrows_avx2(T_IQ4_XS, bytes, d_offset, w, cols, rb, re, q, d, bsums, n, y, ldy);
}

/// One block's integer sum at AVX2 (the blocks after the last whole eight of `rows32_one_token`).
static inline __attribute__((always_inline)) int32_t block32_avx2(int type, const uint8_t *blk, const int8_t *q8) {
    __m256i v;
    switch (type) {
    case T_Q4_1: v = nibbles32(blk + 4); break;
    case T_Q5_0: v = _mm256_or_si256(nibbles32(blk + 6), fifth_bits(blk + 2)); break;
    case T_Q5_1: v = _mm256_or_si256(nibbles32(blk + 8), fifth_bits(blk + 4)); break;
    default: v = iq4_lookup(nibbles32(blk + 2)); break;
    }
    __m256i a = _mm256_loadu_si256((const __m256i *)q8);
    if (type == T_IQ4_NL) {
        a = _mm256_sign_epi8(a, v);
        v = _mm256_sign_epi8(v, v);
    }
    return hsum_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(v, a), _mm256_set1_epi16(1)));
}


/// A float16 at `p`, widened by vcvtph2ps (exact, so the same value as `half_at`).
static inline float half_f16c(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/// Eight vectors of eight int32 partial sums (one vector per block) → the eight block sums, in order.
static inline __m256i sum_blocks8(const __m256i p[8]) {
    const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    const __m256i q0 = _mm256_hadd_epi32(h01, h23), q1 = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20), _mm256_permute2x128_si256(q0, q1, 0x31));
}

/// One token's rows at AVX2, eight blocks at a time: lane k of one float vector is `rows32`'s
/// acc[k] (block b's sum, exact in int32, converted and fma'd into lane b mod 8, then the offset
/// term), so each output has `rows32`'s bits; the blocks after the last whole eight go through
/// the scalar steps on the same accumulators.
static inline __attribute__((always_inline)) void rows32_one_token(int type, int64_t bytes, const uint8_t *w, int64_t cols,
                                                                   int64_t row_begin, int64_t row_end, const int8_t *q, const float *d,
                                                                   const int32_t *sums, const float *s, float *y) {
    const int64_t nb = cols / 32;
    const int has_min = type == T_Q4_1 || type == T_Q5_1;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = w + r * nb * bytes;
        __m256 acc = _mm256_setzero_ps();
        int64_t b = 0;
        for (; b + 8 <= nb; b += 8) {
            __m256i p[8];
            float dw[8], mw[8];
            for (int k = 0; k < 8; k++) {
                const uint8_t *blk = row + (b + k) * bytes;
                __m256i v;
                switch (type) {
                case T_Q4_1: v = nibbles32(blk + 4); break;
                case T_Q5_0: v = _mm256_or_si256(nibbles32(blk + 6), fifth_bits(blk + 2)); break;
                case T_Q5_1: v = _mm256_or_si256(nibbles32(blk + 8), fifth_bits(blk + 4)); break;
                default: v = iq4_lookup(nibbles32(blk + 2)); break;
                }
                __m256i a = _mm256_loadu_si256((const __m256i *)(q + 32 * (b + k)));
                if (type == T_IQ4_NL) {
                    a = _mm256_sign_epi8(a, v);
                    v = _mm256_sign_epi8(v, v);
                }
                p[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(v, a), ones);
                dw[k] = half_f16c(blk);
                mw[k] = has_min ? half_f16c(blk + 2) : 0;
            }
            __m256i sumi = sum_blocks8(p);
            if (type == T_Q5_0) sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(sums + b)), 4));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_mul_ps(_mm256_loadu_ps(dw), _mm256_loadu_ps(d + b)), acc);
            if (has_min) acc = _mm256_fmadd_ps(_mm256_loadu_ps(mw), _mm256_loadu_ps(s + b), acc);
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, acc);
        for (; b < nb; b++) {
            const uint8_t *blk = row + b * bytes;
            int32_t sumi = block32_avx2(type, blk, q + 32 * b);
            if (type == T_Q5_0) sumi -= 16 * sums[b];
            lanes[b % 8] = fmaf((float)sumi, half_at(blk) * d[b], lanes[b % 8]);
            if (has_min) lanes[b % 8] = fmaf(half_at(blk + 2), s[b], lanes[b % 8]);
        }
        y[r] = moe_reduce8(lanes);
    }
}

static void rows32_avx2(int type, const uint8_t *w, int64_t cols, int64_t rb, int64_t re, const int8_t *q, const float *d,
                        const int32_t *sums, const float *s, int64_t n, float *y, int64_t ldy) {
    if (n == 1) {
        switch (type) {
        case T_Q4_1: rows32_one_token(T_Q4_1, Q4_1_BYTES, w, cols, rb, re, q, d, sums, s, y); break;
        case T_Q5_0: rows32_one_token(T_Q5_0, Q5_0_BYTES, w, cols, rb, re, q, d, sums, s, y); break;
        case T_Q5_1: rows32_one_token(T_Q5_1, Q5_1_BYTES, w, cols, rb, re, q, d, sums, s, y); break;
        default: rows32_one_token(T_IQ4_NL, IQ4_NL_BYTES, w, cols, rb, re, q, d, sums, s, y); break;
        }
        return;
    }
    switch (type) {
    case T_Q4_1: rows32_avx2_impl(T_Q4_1, Q4_1_BYTES, w, cols, rb, re, q, d, sums, s, n, y, ldy); break;
    case T_Q5_0: rows32_avx2_impl(T_Q5_0, Q5_0_BYTES, w, cols, rb, re, q, d, sums, s, n, y, ldy); break;
    case T_Q5_1: rows32_avx2_impl(T_Q5_1, Q5_1_BYTES, w, cols, rb, re, q, d, sums, s, n, y, ldy); break;
    default: rows32_avx2_impl(T_IQ4_NL, IQ4_NL_BYTES, w, cols, rb, re, q, d, sums, s, n, y, ldy); break;
    }
}
#pragma clang attribute pop
#endif

int moe_gemm_ggml32_q8(int level, int type, const uint8_t *w, int64_t cols, int64_t row_begin, int64_t row_end,
                       const int8_t *q, const float *d, const int32_t *sums, const float *s, int64_t n, float *y, int64_t ldy) {
    if (type != T_Q4_1 && type != T_Q5_0 && type != T_Q5_1 && type != T_IQ4_NL) return 0;
#if defined(__x86_64__)
    if (level >= MOE_KERNEL_AVX2) {
        rows32_avx2(type, w, cols, row_begin, row_end, q, d, sums, s, n, y, ldy);
        return 1;
    }
#else
    (void)level;
#endif
    switch (type) {
    case T_Q4_1: rows32(T_Q4_1, q4_1_portable, Q4_1_BYTES, w, cols, row_begin, row_end, q, d, sums, s, n, y, ldy); break;
    case T_Q5_0: rows32(T_Q5_0, q5_0_portable, Q5_0_BYTES, w, cols, row_begin, row_end, q, d, sums, s, n, y, ldy); break;
    case T_Q5_1: rows32(T_Q5_1, q5_1_portable, Q5_1_BYTES, w, cols, row_begin, row_end, q, d, sums, s, n, y, ldy); break;
    default: rows32(T_IQ4_NL, iq4_nl_portable, IQ4_NL_BYTES, w, cols, row_begin, row_end, q, d, sums, s, n, y, ldy); break;
    }
    return 1;
}

int moe_gemm_ggml_k_q8_K(int level, int type, const uint8_t *w, int64_t cols, int64_t row_begin, int64_t row_end,
                         const int8_t *q, const float *d, const int32_t *bsums, int64_t n, float *y, int64_t ldy) {
    superblock_fn fn;
    int64_t bytes, d_offset;
    switch (type) {
    case T_Q3_K: fn = q3K_portable; bytes = Q3_K_BYTES; d_offset = 108; break;
    case T_IQ4_XS: fn = iq4_xs_portable; bytes = IQ4_XS_BYTES; d_offset = 0; break;
    default: return 0;
    }
#if defined(__x86_64__)
    if (level >= MOE_KERNEL_AVX2 && n > 1) {
        superrows_avx2_dispatch(type, bytes, d_offset, w, cols, row_begin, row_end, q, d, bsums, n, y, ldy);
        return 1;
    }
    if (level >= MOE_KERNEL_AVX2) fn = type == T_Q3_K ? q3K_avx2 : iq4_xs_avx2;
#else
    (void)level;
#endif
    const int64_t nb = cols / 256;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = w + r * nb * bytes;
        for (int64_t t = 0; t < n; t++) {
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = row + b * bytes;
                int32_t lanes[8];
                fn(blk, q + t * cols + b * 256, bsums + (t * nb + b) * 16, lanes);
                const float db = half_at(blk + d_offset) * d[t * nb + b];
                for (int m = 0; m < 8; m++) acc[m] = fmaf(db, (float)lanes[m], acc[m]);
            }
            y[t * ldy + r] = moe_reduce8(acc);
        }
    }
    return 1;
}
