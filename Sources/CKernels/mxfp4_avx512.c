// The MXFP4 integer-dot product on AVX-512 with VBMI and VNNI (Ice Lake and later, Zen 4 and
// later): `moe_gemm_mxfp4_q8`'s arithmetic (see CKernels.h), the same bits as the portable
// reference, at the memory bound for decode.
//
// Why its own kernel: the block-group kernel of avx512_body.h decodes the 17-byte blocks with a
// vpgatherdd of the exponents per 8 blocks, which waited on DRAM (the gather ran ahead of the
// hardware prefetcher's stream), and reduces every block with a horizontal sum; it streamed
// gpt-oss-20b's experts at half the machine's read rate. Here 16 blocks (272 bytes) are five
// plain loads; vpermt2b compacts each 4 blocks' nibble bytes into one register and gathers the 16
// exponent bytes from the same registers (no second memory access), an e8m0 exponent becomes its
// float scale by a shift into the exponent field, vpermb maps nibbles to the doubled e2m1 values
// (no masking), and the activations are reordered once per call (as the q4 nibble kernel's,
// avx512_body.h) so that vpdpbusd leaves whole blocks in few lanes.
#if defined(__x86_64__)
#include "internal.h"
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#pragma clang attribute push (__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi"))), apply_to = function)

/// Blocks per group: 16 blocks of 17 bytes, 272 bytes.
#define MX_GROUP 16
#define MX_GROUP_BYTES (MX_GROUP * MOE_MXFP4_BLOCK_BYTES)
/// Token rows handled per pass over a row's blocks (accumulators held in registers).
#define MX_TILE 8

/// The activations as the kernel reads them, per token t (groups of 16 blocks, zero beyond the
/// last block): `qa[t][groups][4 chunks][64 bytes: elements 0-15 of the chunk's 4 blocks,
/// 64 bytes: elements 16-31]`, `dp[t][groups·16]` the block scales and `cp[t][groups·16]` the
/// 12·Σq that the values' +12 offset adds to each block sum.
static void mx_reorder(const int8_t *q, const float *d, const int32_t *sums, int64_t n, int64_t cols,
                       int8_t *qa, float *dp, int32_t *cp) {
    const int64_t nb = cols / 32, groups = (nb + MX_GROUP - 1) / MX_GROUP, chunks = groups * 4, nbp = groups * MX_GROUP;
    for (int64_t t = 0; t < n; t++) {
        const int8_t *src = q + t * cols;
        int8_t *dst = qa + t * chunks * 128;
        for (int64_t c = 0; c < chunks; c++) {
            const int64_t have = nb - 4 * c; // blocks of this chunk that exist
            __m512i x0, x1;
            if (have >= 4) {
                x0 = _mm512_loadu_si512((const void *)(src + 128 * c));
                x1 = _mm512_loadu_si512((const void *)(src + 128 * c + 64));
            } else {
                const int64_t bytes = have > 0 ? 32 * have : 0;
                x0 = _mm512_maskz_loadu_epi8(bytes >= 64 ? ~0ULL : (bytes > 0 ? (1ULL << bytes) - 1 : 0), src + 128 * c);
                x1 = _mm512_maskz_loadu_epi8(bytes > 64 ? (1ULL << (bytes - 64)) - 1 : 0, src + 128 * c + 64);
            }
            // 128-bit chunks: x0 = [b0 lo, b0 hi, b1 lo, b1 hi], x1 = [b2 lo, b2 hi, b3 lo, b3 hi].
            _mm512_storeu_si512((void *)(dst + 128 * c), _mm512_shuffle_i64x2(x0, x1, 0x88));
            _mm512_storeu_si512((void *)(dst + 128 * c + 64), _mm512_shuffle_i64x2(x0, x1, 0xDD));
        }
        for (int64_t b = 0; b < nbp; b++) {
            dp[t * nbp + b] = b < nb ? d[t * nb + b] : 0;
            cp[t * nbp + b] = b < nb ? 12 * sums[t * nb + b] : 0;
        }
    }
}

/// One group's weights, decoded: `lo[k]`/`hi[k]` the doubled e2m1 values + 12 (0...24) of
/// elements 0-15 / 16-31 of blocks 4k...4k+3 (128-bit lane i: block 4k+i), and the 16 blocks'
/// half scales 2^(e-128) in block order. `L[0..4]` hold the group's 272 bytes from offset 64·j
/// (L[4] only its first 16); bytes past a short last group are zero, which decodes to blocks
/// whose products are exactly zero (their activations and scales are zero too).
static inline __attribute__((always_inline)) __m512 mx_decode(const __m512i L[5], __m512i lo[4], __m512i hi[4]) {
    // Byte 16i + j of chunk k: nibble byte j of block 4k + i, at 68k + 17i + 1 + j in the group,
    // which is byte 4k + 17i + 1 + j of the pair (L[k], L[k+1]).
    const __m512i nibble_index = _mm512_set_epi8(
        67, 66, 65, 64, 63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52,
        50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39, 38, 37, 36, 35,
        33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18,
        16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1);
    // llama.cpp's kvalues_mxfp4 (the doubled e2m1 values) + 12, by the low 6 bits of a byte:
    // vpermb ignores bits 6-7 and the table repeats every 16, so the nibble needs no mask.
    const __m512i values = _mm512_broadcast_i32x4(_mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
    for (int k = 0; k < 4; k++) {
        const __m512i w = _mm512_permutex2var_epi8(L[k], _mm512_add_epi8(nibble_index, _mm512_set1_epi8((char)(4 * k))), L[k + 1]);
        lo[k] = _mm512_permutexvar_epi8(w, values);
        hi[k] = _mm512_permutexvar_epi8(_mm512_srli_epi16(w, 4), values);
    }
    // The exponent of block m (at byte 17m) into the low byte of dword m: blocks 0-7 from
    // (L0, L1), blocks 8-15 (bytes 136...255) from (L2, L3), the other bytes zero.
    const __m512i exponent_index = _mm512_set_epi32(127, 110, 93, 76, 59, 42, 25, 8, 119, 102, 85, 68, 51, 34, 17, 0);
    const __m512i e = _mm512_or_si512(_mm512_maskz_permutex2var_epi8(0x0000000011111111ULL, L[0], exponent_index, L[1]),
                                      _mm512_maskz_permutex2var_epi8(0x1111111100000000ULL, L[2], exponent_index, L[3]));
    // 2^(e-128) (moe_mxfp4_half_scale): exponent field e - 1 for e in 2...254, the subnormals
    // 2^-127 and 2^-128 for e = 1 and 0, NaN for 255.
    __m512i bits = _mm512_slli_epi32(_mm512_sub_epi32(e, _mm512_set1_epi32(1)), 23);
    bits = _mm512_mask_sllv_epi32(bits, _mm512_cmplt_epu32_mask(e, _mm512_set1_epi32(2)), _mm512_set1_epi32(0x00200000), e);
    bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(e, _mm512_set1_epi32(255)), _mm512_set1_epi32(0x7FC00000));
    return _mm512_castsi512_ps(bits);
}

/// One token against one decoded group: the 16 exact block sums, then the canonical float
/// steps (blocks 0-7 of the group into lanes 0-7, then blocks 8-15), as the portable kernel.
static inline __attribute__((always_inline)) __m256 mx_token(const __m512i lo[4], const __m512i hi[4], __m512 ws,
                                                             const int8_t *a, const float *dg, const int32_t *cg, __m256 acc) {
    __m512i s[4];
    for (int k = 0; k < 4; k++) {
        // Lane 4i + j: block 4k + i, elements 4j...4j+3 and 16+4j...16+4j+3; at most 8·24·127 in magnitude.
        s[k] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[k], _mm512_loadu_si512((const void *)(a + 128 * k))),
                                   hi[k], _mm512_loadu_si512((const void *)(a + 128 * k + 64)));
    }
    // Packed to int16 (exact: |lane| ≤ 24,384) and pairs summed: per 128-bit lane i,
    // [block i part 01, part 23, block 4+i part 01, part 23] (p01) and blocks 8+i, 12+i (p23).
    const __m512i ones = _mm512_set1_epi16(1);
    const __m512 p01 = _mm512_castsi512_ps(_mm512_madd_epi16(_mm512_packs_epi32(s[0], s[1]), ones));
    const __m512 p23 = _mm512_castsi512_ps(_mm512_madd_epi16(_mm512_packs_epi32(s[2], s[3]), ones));
    // Lane 4i + k: block 4k + i's sum (in int32: a pair's sum can exceed int16, so no second pack).
    const __m512i v = _mm512_add_epi32(_mm512_castps_si512(_mm512_shuffle_ps(p01, p23, _MM_SHUFFLE(2, 0, 2, 0))),
                                       _mm512_castps_si512(_mm512_shuffle_ps(p01, p23, _MM_SHUFFLE(3, 1, 3, 1))));
    __m512i sum = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), v);
    sum = _mm512_sub_epi32(sum, _mm512_loadu_si512((const void *)cg)); // the values stand for (value + 12)
    const __m512 f = _mm512_cvtepi32_ps(sum);
    const __m512 scale = _mm512_mul_ps(ws, _mm512_loadu_ps(dg));
    acc = _mm256_fmadd_ps(_mm512_castps512_ps256(f), _mm512_castps512_ps256(scale), acc);
    return _mm256_fmadd_ps(_mm512_extractf32x8_ps(f, 1), _mm512_extractf32x8_ps(scale, 1), acc);
}

/// The canonical sum of the eight lanes: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
static inline float mx_reduce(__m256 acc) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/// Row `row` (nb blocks) against T tokens from t0 (T a constant at each call site): each group
/// decoded once for all T.
static inline __attribute__((always_inline)) void mx_row(int T, const uint8_t *row, int64_t nb, const int8_t *qa, const float *dp,
                                                         const int32_t *cp, int64_t t0, float *y, int64_t ldy) {
    const int64_t full = nb / MX_GROUP, groups = (nb + MX_GROUP - 1) / MX_GROUP, nbp = groups * MX_GROUP;
    __m256 acc[MX_TILE];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *p = row + g * MX_GROUP_BYTES;
        __m512i L[5];
        if (g < full) {
            for (int j = 0; j < 4; j++) L[j] = _mm512_loadu_si512((const void *)(p + 64 * j));
            L[4] = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(p + 256)));
        } else {
            // The short last group: only its own bytes (the next ones may be past the matrix).
            const int64_t bytes = (nb - full * MX_GROUP) * MOE_MXFP4_BLOCK_BYTES;
            for (int j = 0; j < 5; j++) {
                const int64_t left = bytes - 64 * j;
                const __mmask64 m = left >= 64 ? ~0ULL : (left > 0 ? (1ULL << left) - 1 : 0);
                L[j] = _mm512_maskz_loadu_epi8(m, p + 64 * j);
            }
        }
        __m512i lo[4], hi[4];
        const __m512 ws = mx_decode(L, lo, hi);
        for (int t = 0; t < T; t++) {
            const int64_t tt = t0 + t;
            acc[t] = mx_token(lo, hi, ws, qa + (tt * groups + g) * 512, dp + tt * nbp + g * MX_GROUP, cp + tt * nbp + g * MX_GROUP, acc[t]);
        }
    }
    for (int t = 0; t < T; t++) y[(t0 + t) * ldy] = mx_reduce(acc[t]);
}

/// Token rows from which a product runs the 16-row tile (`mx_gemm_rows16`) instead of the nibble
/// kernel: prefill-sized products, where the nibble kernel is compute-bound on its per-token
/// horizontal sums (docs/BENCHMARKS.md, gpt-oss's kernel table).
#define MX_ROWS16_MIN_TOKENS 9

/// Nonzero with `MOE_MXFP4_KERNEL=nibbles`: the nibble kernel at every token count (same bits; for
/// side-by-side timing of the tile).
static int mx_tile_disabled(void) {
    static int cached = -1; // read once; a benign race (every thread computes the same value)
    if (cached < 0) {
        const char *v = getenv("MOE_MXFP4_KERNEL");
        cached = v && strcmp(v, "nibbles") == 0;
    }
    return cached;
}

/// Block b of 16 weight rows (`rows[m] + b · stride[m]`, the 17-byte block_mxfp4; a zero block
/// for rows past the matrix) → eight registers of 16 lanes at `out`: register j lane m = row m's
/// values + 12 (0...24, unsigned) of elements 4j...4j+3 (j < 4 the low nibbles: elements 0-15;
/// j ≥ 4 the high ones: 16-31), and the rows' half scales 2^(e-128) at `ws` (0 past the matrix).
static inline __attribute__((always_inline)) void mx_pack_block16(const uint8_t *const rows[16], const int64_t stride[16], int64_t b,
                                                                 int live, uint8_t *out, float *ws) {
    __m512i x[4];
    for (int k = 0; k < 4; k++) {
        // Lane i: row 4k + i's 16 nibble bytes (byte j: element j low, j + 16 high).
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(rows[4 * k] + b * stride[4 * k] + 1)));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[4 * k + 1] + b * stride[4 * k + 1] + 1)), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[4 * k + 2] + b * stride[4 * k + 2] + 1)), 2);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[4 * k + 3] + b * stride[4 * k + 3] + 1)), 3);
        x[k] = v;
    }
    // llama.cpp's kvalues_mxfp4 + 12 by the low 6 bits of a byte (the table repeats every 16).
    const __m512i values = _mm512_broadcast_i32x4(_mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
    for (int j = 0; j < 4; j++) {
        // Lane m < 8 of ab: row m's dword j (rows 0-3 from x0, 4-7 from x1); cd the same for rows 8-15.
        const __m512i idx = _mm512_setr_epi32(j, 4 + j, 8 + j, 12 + j, 16 + j, 20 + j, 24 + j, 28 + j,
                                              j, 4 + j, 8 + j, 12 + j, 16 + j, 20 + j, 24 + j, 28 + j);
        const __m512i ab = _mm512_permutex2var_epi32(x[0], idx, x[1]);
        const __m512i cd = _mm512_permutex2var_epi32(x[2], idx, x[3]);
        const __m512i v = _mm512_inserti64x4(ab, _mm512_castsi512_si256(cd), 1);
        _mm512_store_si512((void *)(out + 64 * j), _mm512_permutexvar_epi8(v, values));
        _mm512_store_si512((void *)(out + 64 * (j + 4)), _mm512_permutexvar_epi8(_mm512_srli_epi16(v, 4), values));
    }
    for (int m = 0; m < 16; m++) ws[m] = m < live ? moe_mxfp4_half_scale(rows[m][b * stride[m]]) : 0.0f;
}

/// Block b of the packed tile (at local index lb of the tile's span) against T (1 or 2) tokens
/// from t: eight vpdpbusd of the tile's registers with the token's activation dwords broadcast
/// give the 16 rows' exact block sums in their lanes; then the canonical float step (the
/// portable kernel's) into `acc` (block b mod 8).
static inline __attribute__((always_inline)) void mx_rows16_block(int T, const uint8_t *wt, const float *wst, int64_t lb, int64_t nb,
                                                                 int64_t cols, const int8_t *q, const float *d, const int32_t *sums,
                                                                 int64_t t, int64_t b, __m512 *acc0, __m512 *acc1) {
    const uint8_t *wb = wt + lb * 512;
    // Two chains per token (elements 0-15, 16-31), added at the end (exact in int32): half the
    // latency of one chain of eight vpdpbusd.
    __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512(), h0 = _mm512_setzero_si512(), h1 = _mm512_setzero_si512();
    for (int j = 0; j < 4; j++) {
        const __m512i w = _mm512_load_si512((const void *)(wb + 64 * j)), wh = _mm512_load_si512((const void *)(wb + 64 * (j + 4)));
        int32_t a, ah;
        memcpy(&a, q + t * cols + b * 32 + 4 * j, 4);
        memcpy(&ah, q + t * cols + b * 32 + 16 + 4 * j, 4);
        s0 = _mm512_dpbusd_epi32(s0, w, _mm512_set1_epi32(a));
        h0 = _mm512_dpbusd_epi32(h0, wh, _mm512_set1_epi32(ah));
        if (T == 2) {
            memcpy(&a, q + (t + 1) * cols + b * 32 + 4 * j, 4);
            memcpy(&ah, q + (t + 1) * cols + b * 32 + 16 + 4 * j, 4);
            s1 = _mm512_dpbusd_epi32(s1, w, _mm512_set1_epi32(a));
            h1 = _mm512_dpbusd_epi32(h1, wh, _mm512_set1_epi32(ah));
        }
    }
    s0 = _mm512_add_epi32(s0, h0);
    if (T == 2) s1 = _mm512_add_epi32(s1, h1);
    const __m512 ws = _mm512_load_ps(wst + 16 * lb);
    // The tile's values stand for (value + 12): s − 12 · Σq; scale = 2^(e-128) · d.
    const __m512i c0 = _mm512_sub_epi32(s0, _mm512_set1_epi32(sums[t * nb + b] * 12));
    *acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c0), _mm512_mul_ps(ws, _mm512_set1_ps(d[t * nb + b])), *acc0);
    if (T == 2) {
        const __m512i c1 = _mm512_sub_epi32(s1, _mm512_set1_epi32(sums[(t + 1) * nb + b] * 12));
        *acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c1), _mm512_mul_ps(ws, _mm512_set1_ps(d[(t + 1) * nb + b])), *acc1);
    }
}

/// T (1 or 2) tokens from t against the packed span [b0, b1) of a 16-row tile (b0 a multiple of
/// 8, so block b goes into accumulator b mod 8 as in the portable kernel; whole groups of 8
/// unrolled, so the 8·T accumulators stay in registers). The accumulators come from `saved`
/// (`[T][8][16]` floats; zeros for the first span) and go back to it, or, after the last span,
/// through the canonical final sum lane-wise into the tile's live rows of y.
static inline __attribute__((always_inline)) void mx_rows16_span(int T, const uint8_t *wt, const float *wst, int64_t b0, int64_t b1,
                                                                int64_t nb, int64_t cols, const int8_t *q, const float *d,
                                                                const int32_t *sums, int64_t t, float *saved, int first, int last,
                                                                float *y, int64_t ldy, __mmask16 live) {
    __m512 a0[8], a1[8];
    for (int k = 0; k < 8; k++) {
        a0[k] = first ? _mm512_setzero_ps() : _mm512_load_ps(saved + 16 * k);
        a1[k] = first || T < 2 ? _mm512_setzero_ps() : _mm512_load_ps(saved + 128 + 16 * k);
    }
    int64_t g = b0;
    for (; g + 8 <= b1; g += 8) {
#pragma clang loop unroll(full)
        for (int k = 0; k < 8; k++) mx_rows16_block(T, wt, wst, g + k - b0, nb, cols, q, d, sums, t, g + k, &a0[k], &a1[k]);
    }
#pragma clang loop unroll(full)
    for (int k = 0; k < 8; k++) {
        if (g + k < b1) mx_rows16_block(T, wt, wst, g + k - b0, nb, cols, q, d, sums, t, g + k, &a0[k], &a1[k]);
    }
    if (!last) {
        for (int k = 0; k < 8; k++) {
            _mm512_store_ps(saved + 16 * k, a0[k]);
            if (T == 2) _mm512_store_ps(saved + 128 + 16 * k, a1[k]);
        }
        return;
    }
    const __m512 v0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0[0], a0[4]), _mm512_add_ps(a0[2], a0[6])),
                                    _mm512_add_ps(_mm512_add_ps(a0[1], a0[5]), _mm512_add_ps(a0[3], a0[7])));
    _mm512_mask_storeu_ps(y + t * ldy, live, v0);
    if (T == 2) {
        const __m512 v1 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a1[0], a1[4]), _mm512_add_ps(a1[2], a1[6])),
                                        _mm512_add_ps(_mm512_add_ps(a1[1], a1[5]), _mm512_add_ps(a1[3], a1[7])));
        _mm512_mask_storeu_ps(y + (t + 1) * ldy, live, v1);
    }
}

/// Blocks of a tile decoded and run at a time (a multiple of 8): 32 blocks are 16 KiB of
/// decoded values plus 2 KiB of scales, which stay in L1 while every token runs over them (the
/// whole tile of a 2880-wide row, 46 KiB, did not: the loads of the tile from L2 bounded it).
#define MX_SPAN 32

/// The MXFP4 product for many tokens (prefill), 16 weight rows at a time, as the q4 kernels'
/// `gemm_q4_rows16`: each span of a 16-row tile is decoded once per call into registers whose
/// lanes are the rows (values + 12 by vpermb), then every token runs against it with
/// whole-width vpdpbusd: no horizontal sum per token and block group (what bounds the nibble
/// kernel at 125-140 GMAC/s from 3 tokens on), 16 outputs in the lanes of one vector; the
/// tokens' accumulators wait in scratch between spans. Per output the arithmetic is the
/// canonical one (exact block sums, acc[b mod 8] fma in block order, the fixed final sum), so
/// the bits are the portable kernel's. 0 when scratch is unavailable.
static int mx_gemm_rows16(const uint8_t *blocks, int64_t cols, int64_t row_begin, int64_t row_end, const int8_t *q, const float *d,
                          const int32_t *sums, int64_t n, float *y, int64_t ldy) {
    const int64_t nb = cols / 32;
    // Scratch: the span [MX_SPAN][8 registers][64 bytes] of values, its half scales
    // [MX_SPAN][16 rows], then the tokens' saved accumulators [n rounded up to pairs][8][16].
    const int64_t pairs = (n + 1) / 2;
    uint8_t *wt = (uint8_t *)moe_thread_scratch((size_t)(MX_SPAN * 512 + MX_SPAN * 64 + pairs * 1024));
    if (!wt) return 0;
    float *wst = (float *)(wt + MX_SPAN * 512);
    float *saved = (float *)(wt + MX_SPAN * 512 + MX_SPAN * 64);
    static const uint8_t zeros[MOE_MXFP4_BLOCK_BYTES] = {0};
    for (int64_t r0 = row_begin; r0 < row_end; r0 += 16) {
        const int live = row_end - r0 < 16 ? (int)(row_end - r0) : 16;
        const uint8_t *rows[16];
        int64_t stride[16];
        for (int m = 0; m < 16; m++) {
            rows[m] = m < live ? blocks + (r0 + m) * nb * MOE_MXFP4_BLOCK_BYTES : zeros;
            stride[m] = m < live ? MOE_MXFP4_BLOCK_BYTES : 0;
        }
        const __mmask16 mask = (__mmask16)((1u << live) - 1);
        for (int64_t b0 = 0; b0 < nb; b0 += MX_SPAN) {
            const int64_t b1 = b0 + MX_SPAN < nb ? b0 + MX_SPAN : nb;
            const int first = b0 == 0, last = b1 == nb;
            for (int64_t b = b0; b < b1; b++) mx_pack_block16(rows, stride, b, live, wt + (b - b0) * 512, wst + 16 * (b - b0));
            int64_t t = 0;
            for (; t + 2 <= n; t += 2)
                mx_rows16_span(2, wt, wst, b0, b1, nb, cols, q, d, sums, t, saved + (t / 2) * 256, first, last, y + r0, ldy, mask);
            if (t < n) mx_rows16_span(1, wt, wst, b0, b1, nb, cols, q, d, sums, t, saved + (t / 2) * 256, first, last, y + r0, ldy, mask);
        }
    }
    return 1;
}

int moe_gemm_mxfp4_q8_avx512vbmi(MOE_GEMM_PARAMS(const uint8_t *blocks)) {
    (void)wscales;
    if (n >= MX_ROWS16_MIN_TOKENS && !mx_tile_disabled() && mx_gemm_rows16(blocks, cols, row_begin, row_end, q, d, sums, n, y, ldy)) return 1;
    const int64_t nb = cols / 32, groups = (nb + MX_GROUP - 1) / MX_GROUP, nbp = groups * MX_GROUP;
    // One piece of this thread's scratch: qa, then dp and cp (every part a multiple of 64 bytes).
    uint8_t *scratch = moe_thread_scratch((size_t)(n * groups * 512 + 2 * n * nbp * 4));
    if (!scratch) return 0;
    int8_t *qa = (int8_t *)scratch;
    float *dp = (float *)(scratch + n * groups * 512);
    int32_t *cp = (int32_t *)(scratch + n * groups * 512 + n * nbp * 4);
    mx_reorder(q, d, sums, n, cols, qa, dp, cp);
    // Rows outermost: a row's blocks are read from memory once, whatever n (a second tile of
    // tokens finds them in L1).
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = blocks + r * nb * MOE_MXFP4_BLOCK_BYTES;
        int64_t t0 = 0;
        for (; t0 + MX_TILE <= n; t0 += MX_TILE) mx_row(MX_TILE, row, nb, qa, dp, cp, t0, y + r, ldy);
        switch (n - t0) {
        case 7: mx_row(7, row, nb, qa, dp, cp, t0, y + r, ldy); break;
        case 6: mx_row(6, row, nb, qa, dp, cp, t0, y + r, ldy); break;
        case 5: mx_row(5, row, nb, qa, dp, cp, t0, y + r, ldy); break;
        case 4: mx_row(4, row, nb, qa, dp, cp, t0, y + r, ldy); break;
        case 3: mx_row(3, row, nb, qa, dp, cp, t0, y + r, ldy); break;
        case 2: mx_row(2, row, nb, qa, dp, cp, t0, y + r, ldy); break;
        case 1: mx_row(1, row, nb, qa, dp, cp, t0, y + r, ldy); break;
        default: break;
        }
    }
    return 1;
}

#pragma clang attribute pop
#endif
