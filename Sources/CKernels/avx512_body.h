// The AVX-512 kernels, included twice by avx512.c: once with vpmaddubsw + vpmaddwd (AVX512-BW)
// and once with vpdpbusd (AVX512-VNNI). Expects MOE_SUFFIX(name) and MOE_DOT(w, a) (16 int32
// lanes: lanes 0-7 the first block's partial sums, 8-15 the second's).

/// Two q4 blocks (32 bytes) as 64 unsigned nibbles: [block 0 low, block 0 high, block 1 low, block 1 high].
static inline __m512i MOE_SUFFIX(expand_q4)(const uint8_t *p) {
    const __m256i raw = _mm256_loadu_si256((const __m256i *)p);
    const __m512i twice = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), _mm512_castsi256_si512(raw));
    const __m512i mixed = _mm512_mask_blend_epi64(0xCC, twice, _mm512_srli_epi16(twice, 4));
    return _mm512_and_si512(mixed, _mm512_set1_epi8(0x0F));
}

/// Two MXFP4 blocks (34 bytes at `p`) as their 64 doubled e2m1 values plus 12 (unsigned 0...24),
/// in the order of `expand_q4`: a pshufb of llama.cpp's `kvalues_mxfp4` table, offset as in avx2.c.
static inline __m512i MOE_SUFFIX(expand_mxfp4)(const uint8_t *p) {
    const __m256i raw = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(p + 1))),
                                                _mm_loadu_si128((const __m128i *)(p + 1 + MOE_MXFP4_BLOCK_BYTES)), 1);
    const __m512i twice = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), _mm512_castsi256_si512(raw));
    const __m512i mixed = _mm512_mask_blend_epi64(0xCC, twice, _mm512_srli_epi16(twice, 4));
    const __m512i table = _mm512_broadcast_i32x4(_mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
    return _mm512_shuffle_epi8(table, _mm512_and_si512(mixed, _mm512_set1_epi8(0x0F)));
}

/// The half scales of eight whole MXFP4 blocks (see avx2.c's half_scales8).
static inline void MOE_SUFFIX(half_scales8)(const uint8_t *p, float out[8]) {
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

/// Four vectors of two blocks' partial sums → the eight block sums, in order.
static inline __m256i MOE_SUFFIX(sum_blocks)(__m512i d0, __m512i d1, __m512i d2, __m512i d3) {
    const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(d0, d1), _mm512_unpackhi_epi32(d0, d1));
    const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(d2, d3), _mm512_unpackhi_epi32(d2, d3));
    // Each 128-bit lane k of u: the sums of lane k of d0, d1, d2, d3.
    const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
    const __m128i even = _mm_add_epi32(_mm512_castsi512_si128(u), _mm512_extracti32x4_epi32(u, 1)); // blocks 0, 2, 4, 6
    const __m128i odd = _mm_add_epi32(_mm512_extracti32x4_epi32(u, 2), _mm512_extracti32x4_epi32(u, 3)); // 1, 3, 5, 7
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi32(even, odd)), _mm_unpackhi_epi32(even, odd), 1);
}

/// The canonical sum of the eight lanes: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
static inline float MOE_SUFFIX(reduce)(__m256 acc) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/// One group of eight blocks of one token against the unpacked weights: for q4 (kind 0) `w`
/// holds unsigned nibbles; for int8 (kind 1) |w| with `neg` marking the negative weights, whose
/// sign moves onto the activations; for MXFP4 (kind 2) the doubled values + 12, `ws` the blocks' half scales.
static inline __attribute__((always_inline)) __m256 MOE_SUFFIX(group)(int kind, const __m512i w[4], const __mmask64 neg[4],
                                                                      const int8_t *qt, const float *dt, const int32_t *st,
                                                                      const float *ws, __m256 acc) {
    __m512i p[4];
    for (int k = 0; k < 4; k++) {
        __m512i a = _mm512_loadu_si512((const void *)(qt + 64 * k));
        if (kind == 1) a = _mm512_mask_sub_epi8(a, neg[k], _mm512_setzero_si512(), a);
        p[k] = MOE_DOT(w[k], a);
    }
    __m256i s = MOE_SUFFIX(sum_blocks)(p[0], p[1], p[2], p[3]);
    __m256 scale = _mm256_loadu_ps(dt);
    if (kind == 0) s = _mm256_sub_epi32(s, _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)st), 3));
    if (kind == 2) {
        const __m256i sq = _mm256_loadu_si256((const __m256i *)st);
        s = _mm256_sub_epi32(s, _mm256_add_epi32(_mm256_slli_epi32(sq, 3), _mm256_slli_epi32(sq, 2)));
    }
    if (kind != 1) scale = _mm256_mul_ps(_mm256_loadu_ps(ws), scale);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc);
}

static inline __attribute__((always_inline)) void MOE_SUFFIX(unpack)(int kind, const uint8_t *p, __m512i w[4], __mmask64 neg[4]) {
    for (int k = 0; k < 4; k++) {
        if (kind == 0) {
            w[k] = MOE_SUFFIX(expand_q4)(p + 32 * k);
            neg[k] = 0;
        } else if (kind == 2) {
            w[k] = MOE_SUFFIX(expand_mxfp4)(p + 2 * k * MOE_MXFP4_BLOCK_BYTES);
            neg[k] = 0;
        } else {
            const __m512i raw = _mm512_loadu_si512((const void *)(p + 64 * k));
            neg[k] = _mm512_movepi8_mask(raw);
            w[k] = _mm512_abs_epi8(raw); // -128 becomes 0x80 = 128 unsigned: still exact
        }
    }
}

/// Weight row `row` against tokens t0..<t0+T; T a constant at every call site.
static inline __attribute__((always_inline)) void MOE_SUFFIX(tile)(int kind, int T, const uint8_t *row, const float *rs, int64_t cols,
                                                                   const int8_t *q, const float *d, const int32_t *sums,
                                                                   int64_t t0, float *y, int64_t ldy, float row_scale) {
    const int64_t nb = cols / 32, groups = nb / 8, rem = nb % 8;
    const int64_t wbytes = kind == 0 ? 16 : (kind == 1 ? 32 : MOE_MXFP4_BLOCK_BYTES);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t g = 0; g < groups; g++) {
        __m512i w[4];
        __mmask64 neg[4];
        MOE_SUFFIX(unpack)(kind, row + g * 8 * wbytes, w, neg);
        float hs[8];
        if (kind == 2) MOE_SUFFIX(half_scales8)(row + g * 8 * wbytes, hs);
        for (int t = 0; t < T; t++) {
            const int64_t tt = t0 + t;
            acc[t] = MOE_SUFFIX(group)(kind, w, neg, q + tt * cols + g * 256, d + tt * nb + g * 8, sums + tt * nb + g * 8,
                                       kind == 0 ? rs + g * 8 : hs, acc[t]);
        }
    }
    if (rem) {
        // Zero-padded copies of the partial last group (see avx2.c).
        uint8_t wb[8 * 32] = {0};
        float wsb[8] = {0};
        memcpy(wb, row + groups * 8 * wbytes, (size_t)(rem * wbytes));
        if (kind == 0) memcpy(wsb, rs + groups * 8, (size_t)rem * sizeof(float));
        if (kind == 2) moe_mxfp4_half_scales(wb, rem, wsb);
        __m512i w[4];
        __mmask64 neg[4];
        MOE_SUFFIX(unpack)(kind, wb, w, neg);
        for (int t = 0; t < T; t++) {
            const int64_t tt = t0 + t;
            int8_t qb[256] = {0};
            float db[8] = {0};
            int32_t sb[8] = {0};
            memcpy(qb, q + tt * cols + groups * 256, (size_t)(rem * 32));
            memcpy(db, d + tt * nb + groups * 8, (size_t)rem * sizeof(float));
            memcpy(sb, sums + tt * nb + groups * 8, (size_t)rem * sizeof(int32_t));
            acc[t] = MOE_SUFFIX(group)(kind, w, neg, qb, db, sb, wsb, acc[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        const float v = MOE_SUFFIX(reduce)(acc[t]);
        y[(t0 + t) * ldy] = kind == 1 ? v * row_scale : v;
    }
}

static inline __attribute__((always_inline)) void MOE_SUFFIX(gemm)(int kind, const uint8_t *w, const float *wscales, int64_t cols,
                                                                   int64_t row_begin, int64_t row_end, const int8_t *q, const float *d,
                                                                   const int32_t *sums, int64_t n, float *y, int64_t ldy) {
    const int64_t nb = cols / 32;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = kind == 0 ? w + r * nb * 16 : (kind == 1 ? w + r * cols : w + r * nb * MOE_MXFP4_BLOCK_BYTES);
        const float *rs = kind == 0 ? wscales + r * nb : 0;
        const float row_scale = kind == 1 ? wscales[r] : 0;
        int64_t t0 = 0;
        for (; t0 + 4 <= n; t0 += 4) MOE_SUFFIX(tile)(kind, 4, row, rs, cols, q, d, sums, t0, y + r, ldy, row_scale);
        switch (n - t0) {
        case 3: MOE_SUFFIX(tile)(kind, 3, row, rs, cols, q, d, sums, t0, y + r, ldy, row_scale); break;
        case 2: MOE_SUFFIX(tile)(kind, 2, row, rs, cols, q, d, sums, t0, y + r, ldy, row_scale); break;
        case 1: MOE_SUFFIX(tile)(kind, 1, row, rs, cols, q, d, sums, t0, y + r, ldy, row_scale); break;
        default: break;
        }
    }
}

#ifdef MOE_GEMM_TRANSPOSED
/// Eight registers of two blocks each (16 blocks × 8 dwords, block-major) → eight registers
/// whose lane i is block i's dword j (register j): vpdpbusd then sums each block in its own lane.
static inline void MOE_SUFFIX(transpose16x8)(__m512i m[8]) {
    // Step 1, per pair of registers (blocks 4p..4p+3): for j < 4 and j ≥ 4, the four blocks' dword j side by side.
    const __m512i lo = _mm512_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27);
    const __m512i hi = _mm512_setr_epi32(4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31);
    __m512i a[8];
    for (int p = 0; p < 4; p++) {
        a[2 * p] = _mm512_permutex2var_epi32(m[2 * p], lo, m[2 * p + 1]);     // chunk j (4 dwords) for j = 0..3
        a[2 * p + 1] = _mm512_permutex2var_epi32(m[2 * p], hi, m[2 * p + 1]); // j = 4..7
    }
    // Steps 2-3: register j gathers chunk j of the four pairs, as 128-bit lanes.
    for (int h = 0; h < 2; h++) {
        const __m512i b01lo = _mm512_shuffle_i32x4(a[h], a[2 + h], 0x44), b01hi = _mm512_shuffle_i32x4(a[h], a[2 + h], 0xEE);
        const __m512i b23lo = _mm512_shuffle_i32x4(a[4 + h], a[6 + h], 0x44), b23hi = _mm512_shuffle_i32x4(a[4 + h], a[6 + h], 0xEE);
        // b01lo = [p0 c0, p0 c1, p1 c0, p1 c1]; want [p0 c0, p1 c0, p2 c0, p3 c0].
        m[4 * h + 0] = _mm512_shuffle_i32x4(b01lo, b23lo, 0x88);
        m[4 * h + 1] = _mm512_shuffle_i32x4(b01lo, b23lo, 0xDD);
        m[4 * h + 2] = _mm512_shuffle_i32x4(b01hi, b23hi, 0x88);
        m[4 * h + 3] = _mm512_shuffle_i32x4(b01hi, b23hi, 0xDD);
    }
}

/// The GEMM for many tokens: weights and activations transposed per 16 blocks so that one
/// vpdpbusd accumulator holds 16 whole block sums (no horizontal reduction per output); the
/// float steps are the canonical ones (blocks 0-7 of the 16, then 8-15), so the results are the
/// bits of the row-by-row kernel.
static void MOE_SUFFIX(gemm_transposed)(int kind, const uint8_t *w, const float *wscales, int64_t cols,
                                        int64_t row_begin, int64_t row_end, const int8_t *q, const float *d,
                                        const int32_t *sums, int64_t n, float *y, int64_t ldy) {
    const int64_t nb = cols / 32, groups = (nb + 15) / 16, nbp = groups * 16;
    // Activations: [n][groups][8 registers of 64 bytes], padded blocks zero (q, d, sums and scale 0).
    // One piece of this thread's reusable scratch (every size a multiple of 64 bytes).
    uint8_t *scratch = moe_thread_scratch((size_t)(n * nbp * 32 + 2 * n * nbp * 4 + nbp * 32 + nbp * 4));
    if (!scratch) {
        MOE_SUFFIX(gemm)(kind, w, wscales, cols, row_begin, row_end, q, d, sums, n, y, ldy);
        return;
    }
    int8_t *qt = (int8_t *)scratch;
    float *dp = (float *)(scratch + n * nbp * 32);
    int32_t *sp = (int32_t *)(scratch + n * nbp * 32 + n * nbp * 4);
    uint8_t *wt = scratch + n * nbp * 32 + 2 * n * nbp * 4;
    float *wsp = (float *)(wt + nbp * 32);
    for (int64_t t = 0; t < n; t++) {
        for (int64_t g = 0; g < groups; g++) {
            __m512i m[8];
            for (int k = 0; k < 8; k++) {
                const int64_t b = g * 16 + 2 * k;
                uint8_t tmp[64] = {0};
                const int64_t have = b >= nb ? 0 : (nb - b >= 2 ? 2 : 1);
                memcpy(tmp, q + t * cols + b * 32, (size_t)(have * 32));
                m[k] = _mm512_loadu_si512((const void *)tmp);
            }
            MOE_SUFFIX(transpose16x8)(m);
            for (int k = 0; k < 8; k++) _mm512_store_si512((void *)(qt + (t * groups + g) * 512 + 64 * k), m[k]);
        }
        for (int64_t b = 0; b < nbp; b++) {
            dp[t * nbp + b] = b < nb ? d[t * nb + b] : 0;
            sp[t * nbp + b] = b < nb ? sums[t * nb + b] : 0;
        }
    }
    const __m512i nibbles = _mm512_set1_epi8(0x0F);
    (void)nibbles;
    for (int64_t r = row_begin; r < row_end; r++) {
        // This row's weights, unpacked to unsigned bytes (q4: nibbles; int8: w + 128) and transposed.
        for (int64_t g = 0; g < groups; g++) {
            __m512i m[8];
            for (int k = 0; k < 8; k++) {
                const int64_t b = g * 16 + 2 * k;
                const int64_t have = b >= nb ? 0 : (nb - b >= 2 ? 2 : 1);
                if (kind == 0) {
                    uint8_t tmp[32] = {0};
                    memcpy(tmp, w + r * nb * 16 + b * 16, (size_t)(have * 16));
                    m[k] = MOE_SUFFIX(expand_q4)(tmp);
                } else {
                    uint8_t tmp[64] = {0};
                    memcpy(tmp, w + r * cols + b * 32, (size_t)(have * 32));
                    m[k] = _mm512_xor_si512(_mm512_loadu_si512((const void *)tmp), _mm512_set1_epi8((char)0x80));
                }
            }
            MOE_SUFFIX(transpose16x8)(m);
            for (int k = 0; k < 8; k++) _mm512_store_si512((void *)(wt + g * 512 + 64 * k), m[k]);
        }
        if (kind == 0) {
            for (int64_t b = 0; b < nbp; b++) wsp[b] = b < nb ? wscales[r * nb + b] : 0;
        }
        const float row_scale = kind == 0 ? 0 : wscales[r];
        for (int64_t t = 0; t < n; t++) {
            __m256 acc = _mm256_setzero_ps();
            for (int64_t g = 0; g < groups; g++) {
                const int8_t *a = qt + (t * groups + g) * 512;
                const uint8_t *wg = wt + g * 512;
                __m512i s = _mm512_setzero_si512();
                for (int k = 0; k < 8; k++) {
                    s = _mm512_dpbusd_epi32(s, _mm512_load_si512((const void *)(wg + 64 * k)), _mm512_load_si512((const void *)(a + 64 * k)));
                }
                // q4: the nibbles stand for n − 8; int8: the bytes for w + 128.
                const __m512i offset = _mm512_load_si512((const void *)(sp + t * nbp + g * 16));
                s = _mm512_sub_epi32(s, kind == 0 ? _mm512_slli_epi32(offset, 3) : _mm512_slli_epi32(offset, 7));
                const __m512 f = _mm512_cvtepi32_ps(s);
                __m512 scale = _mm512_load_ps(dp + t * nbp + g * 16);
                if (kind == 0) scale = _mm512_mul_ps(_mm512_load_ps(wsp + g * 16), scale);
                acc = _mm256_fmadd_ps(_mm512_castps512_ps256(f), _mm512_castps512_ps256(scale), acc);
                acc = _mm256_fmadd_ps(_mm512_extractf32x8_ps(f, 1), _mm512_extractf32x8_ps(scale, 1), acc);
            }
            const float v = MOE_SUFFIX(reduce)(acc);
            y[t * ldy + r] = kind == 0 ? v : v * row_scale;
        }
    }
}
#endif

#ifdef MOE_GEMM_TRANSPOSED
/// One block of 16 q4 rows (16 bytes each at `rows[m] + b * stride[m]`; zero rows past the
/// matrix) → eight registers of 16 lanes, register j lane m = row m's unpacked nibbles
/// (unsigned 0...15) of elements 4j..4j+3 (j < 4 the low nibbles, j ≥ 4 the high ones), stored at `out`.
static inline __attribute__((always_inline)) void MOE_SUFFIX(q4_pack_block16)(const uint8_t *const rows[16], const int64_t stride[16],
                                                                             int64_t b, uint8_t *out) {
    __m512i x[4];
    for (int k = 0; k < 4; k++) {
        // Lane i: row 4k + i's 16 bytes (dwords 0-3: elements 4j..4j+3 low, 16+4j.. high).
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(rows[4 * k] + b * stride[4 * k])));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[4 * k + 1] + b * stride[4 * k + 1])), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[4 * k + 2] + b * stride[4 * k + 2])), 2);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[4 * k + 3] + b * stride[4 * k + 3])), 3);
        x[k] = v;
    }
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int j = 0; j < 4; j++) {
        // Lane m < 8 of ab: row m's dword j (rows 0-3 from x0, 4-7 from x1); cd the same for rows 8-15.
        const __m512i idx = _mm512_setr_epi32(j, 4 + j, 8 + j, 12 + j, 16 + j, 20 + j, 24 + j, 28 + j,
                                              j, 4 + j, 8 + j, 12 + j, 16 + j, 20 + j, 24 + j, 28 + j);
        const __m512i ab = _mm512_permutex2var_epi32(x[0], idx, x[1]);
        const __m512i cd = _mm512_permutex2var_epi32(x[2], idx, x[3]);
        const __m512i v = _mm512_inserti64x4(ab, _mm512_castsi512_si256(cd), 1);
        _mm512_store_si512((void *)(out + 64 * j), _mm512_and_si512(v, low));
        _mm512_store_si512((void *)(out + 64 * (j + 4)), _mm512_and_si512(_mm512_srli_epi16(v, 4), low));
    }
}

/// Block b of the packed tile against T (1 or 2) tokens from t: eight vpdpbusd of the tile's
/// registers with the token's activation dwords broadcast give the 16 rows' exact block sums in
/// their lanes; then the canonical float step into `acc[u]` (the accumulator of b mod 8).
static inline __attribute__((always_inline)) void MOE_SUFFIX(q4_rows16_block)(int T, const uint8_t *wt, const float *wst, int64_t nb,
                                                                             int64_t cols, const int8_t *q, const float *d,
                                                                             const int32_t *sums, int64_t t, int64_t b, __m512 *acc0,
                                                                             __m512 *acc1) {
    const uint8_t *wb = wt + b * 512;
    __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
    for (int j = 0; j < 8; j++) {
        const __m512i w = _mm512_load_si512((const void *)(wb + 64 * j));
        int32_t a;
        memcpy(&a, q + t * cols + b * 32 + 4 * j, 4);
        s0 = MOE_DOT_ACC(s0, w, _mm512_set1_epi32(a));
        if (T == 2) {
            memcpy(&a, q + (t + 1) * cols + b * 32 + 4 * j, 4);
            s1 = MOE_DOT_ACC(s1, w, _mm512_set1_epi32(a));
        }
    }
    const __m512 ws = _mm512_load_ps(wst + 16 * b);
    // The nibbles stand for n − 8: s − 8 · Σq; scale = wscale · d.
    const __m512i c0 = _mm512_sub_epi32(s0, _mm512_set1_epi32(sums[t * nb + b] * 8));
    *acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c0), _mm512_mul_ps(ws, _mm512_set1_ps(d[t * nb + b])), *acc0);
    if (T == 2) {
        const __m512i c1 = _mm512_sub_epi32(s1, _mm512_set1_epi32(sums[(t + 1) * nb + b] * 8));
        *acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c1), _mm512_mul_ps(ws, _mm512_set1_ps(d[(t + 1) * nb + b])), *acc1);
    }
}

/// T (1 or 2) tokens from t against one packed 16-row tile (`gemm_q4_rows16`): the blocks in
/// order, each into accumulator b mod 8 (whole groups of 8 unrolled, so the 8·T accumulators stay
/// in registers), then the canonical final sum, lane-wise, and the tile's live rows stored.
static inline __attribute__((always_inline)) void MOE_SUFFIX(q4_rows16_tokens)(int T, const uint8_t *wt, const float *wst, int64_t nb,
                                                                              int64_t cols, const int8_t *q, const float *d,
                                                                              const int32_t *sums, int64_t t, float *y, int64_t ldy,
                                                                              __mmask16 live) {
    __m512 a0[8], a1[8];
    for (int k = 0; k < 8; k++) a0[k] = a1[k] = _mm512_setzero_ps();
    const int64_t whole = nb / 8 * 8;
    for (int64_t g = 0; g < whole; g += 8) {
#pragma clang loop unroll(full)
        for (int k = 0; k < 8; k++) MOE_SUFFIX(q4_rows16_block)(T, wt, wst, nb, cols, q, d, sums, t, g + k, &a0[k], &a1[k]);
    }
#pragma clang loop unroll(full)
    for (int k = 0; k < 8; k++) {
        if (whole + k < nb) MOE_SUFFIX(q4_rows16_block)(T, wt, wst, nb, cols, q, d, sums, t, whole + k, &a0[k], &a1[k]);
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

/// The q4 GEMM for many tokens (prefill), 16 weight rows at a time: each tile of 16 rows is
/// unpacked once per call into registers whose lanes are the rows (`q4_pack_block16`, L1-sized
/// scratch), then every token runs against it with whole-width vpdpbusd (no padding of short
/// rows to 16 blocks, no horizontal sum per output: 16 outputs in the lanes of one vector).
/// Per output the arithmetic is the canonical one (exact block sums, acc[b mod 8] fma, the
/// fixed final sum), so the bits are the portable kernel's. False when scratch is unavailable.
/// `half` (a constant at each call site): `scales` are float16 block scales (`moe_gemm_q4h_q8`),
/// widened exactly into the tile's float scales; else float32.
static inline __attribute__((always_inline)) int MOE_SUFFIX(gemm_q4_rows16)(int half, const uint8_t *blocks, const void *scales, int64_t cols,
                                                                           int64_t row_begin, int64_t row_end, const int8_t *q, const float *d,
                                                                           const int32_t *sums, int64_t n, float *y, int64_t ldy) {
    const int64_t nb = cols / 32;
    // The tile: [nb][8 registers][64 bytes] of nibbles, then its scales [nb][16 rows].
    uint8_t *wt = (uint8_t *)moe_thread_scratch((size_t)(nb * 512 + nb * 64));
    if (!wt) return 0;
    float *wst = (float *)(wt + nb * 512);
    static const uint8_t zeros[16] = {0};
    for (int64_t r0 = row_begin; r0 < row_end; r0 += 16) {
        const int64_t live = row_end - r0 < 16 ? row_end - r0 : 16;
        const uint8_t *rows[16];
        int64_t stride[16];
        for (int m = 0; m < 16; m++) {
            rows[m] = m < live ? blocks + (r0 + m) * nb * 16 : zeros;
            stride[m] = m < live ? 16 : 0;
        }
        const __mmask16 mask = (__mmask16)((1u << live) - 1);
        const __m512i index = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                 _mm512_set1_epi32((int)nb));
        for (int64_t b = 0; b < nb; b++) {
            MOE_SUFFIX(q4_pack_block16)(rows, stride, b, wt + b * 512);
            if (half) {
                // Scalar: a 32-bit gather of 16-bit scales could read past the matrix's last one.
                const uint16_t *hs = (const uint16_t *)scales + r0 * nb + b;
                for (int m = 0; m < 16; m++) wst[16 * b + m] = m < live ? moe_f16_to_f32(hs[m * nb]) : 0.0f;
            } else {
                _mm512_store_ps(wst + 16 * b, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, index, (const float *)scales + r0 * nb + b, 4));
            }
        }
        int64_t t = 0;
        for (; t + 2 <= n; t += 2) MOE_SUFFIX(q4_rows16_tokens)(2, wt, wst, nb, cols, q, d, sums, t, y + r0, ldy, mask);
        if (t < n) MOE_SUFFIX(q4_rows16_tokens)(1, wt, wst, nb, cols, q, d, sums, t, y + r0, ldy, mask);
    }
    return 1;
}
#endif

/// The q4 product for a few tokens (decode), without a horizontal sum per block group: 64
/// bytes of weights are four whole blocks (16 bytes each); their low nibbles (elements 0-15)
/// and high nibbles (16-31) are dotted with activations reordered once per call to match
/// (`q4_reorder`), so each 32-bit lane holds 8 products of one block, four lanes a block. Two
/// rounds of packs + madd (exact: a lane's sum is at most 8 · 15 · 127 < 2^15) bring four such
/// vectors to the 16 block sums of a 16-block group, and one permute back into block order; the
/// float steps are then the canonical ones (blocks 0-7 of the 16, then 8-15), so the bits are
/// the row-by-row kernel's. About 35 vector operations per 16 blocks where `tile` needs ~90.
///
/// `q4_reorder`: token t's activations as [groups of 16 blocks][4 chunks][64 low-half bytes
/// (elements 0-15 of the chunk's 4 blocks), 64 high-half bytes], zero beyond the last block.
static inline void MOE_SUFFIX(q4_reorder)(const int8_t *q, int64_t n, int64_t cols, int8_t *out) {
    const int64_t nb = cols / 32, chunks = (nb + 15) / 16 * 4;
    for (int64_t t = 0; t < n; t++) {
        const int8_t *src = q + t * cols;
        int8_t *dst = out + t * chunks * 128;
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
    }
}

/// The 16 exact block sums Σ nibble · q of one 16-block group, in block order: `lo`/`hi` the
/// group's unpacked nibbles (four chunks of four blocks), `a` the token's reordered activations.
/// Only the first `live` chunks hold blocks (a short last group, or rows of fewer than 16 blocks).
static inline __attribute__((always_inline)) __m512i MOE_SUFFIX(q4_group_sums)(const __m512i lo[4], const __m512i hi[4], const int8_t *a,
                                                                              int64_t live) {
    __m512i s[4];
    for (int k = 0; k < 4; k++) {
        if (k >= live) { s[k] = _mm512_setzero_si512(); continue; }
        // Lane 4i + j: products of block 4k + i, elements 4j..4j+3 and 16+4j..16+4j+3.
        s[k] = MOE_DOT_ACC(MOE_DOT_ACC(_mm512_setzero_si512(), lo[k], _mm512_loadu_si512((const void *)(a + 128 * k))),
                           hi[k], _mm512_loadu_si512((const void *)(a + 128 * k + 64)));
    }
    const __m512i ones = _mm512_set1_epi16(1);
    // Per 128-bit lane j: [s0 block j (4 lanes), s1 block j] as int16 → pairs summed.
    const __m512i p01 = _mm512_madd_epi16(_mm512_packs_epi32(s[0], s[1]), ones);
    const __m512i p23 = _mm512_madd_epi16(_mm512_packs_epi32(s[2], s[3]), ones);
    // Lane 4j + k: block 4k + j's sum.
    const __m512i v = _mm512_madd_epi16(_mm512_packs_epi32(p01, p23), ones);
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), v);
}

/// Rows of a q4 matrix against T (1-4, a constant at each call site) tokens from t0; `half` (a
/// constant too): `scales` are float16 (`moe_gemm_q4h_q8`, widened exactly by vcvtph2ps), else float32.
static inline __attribute__((always_inline)) void MOE_SUFFIX(q4_rows)(int T, int half, const uint8_t *blocks, const void *scales, int64_t cols,
                                                                      int64_t row_begin, int64_t row_end, const int8_t *qa,
                                                                      const float *d, const int32_t *sums, int64_t t0, float *y, int64_t ldy) {
    const int64_t nb = cols / 32, groups = (nb + 15) / 16;
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = blocks + r * nb * 16;
        const float *rs = half ? 0 : (const float *)scales + r * nb;
        const uint16_t *hs = half ? (const uint16_t *)scales + r * nb : 0;
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int64_t g = 0; g < groups; g++) {
            const int64_t have = nb - 16 * g; // blocks of this group that exist (16 unless the last)
            const __mmask16 bm = have >= 16 ? 0xFFFF : (__mmask16)((1u << have) - 1);
            const int64_t live = have >= 16 ? 4 : (have + 3) / 4;
            __m512i lo[4], hi[4];
            for (int k = 0; k < 4; k++) {
                if (k >= live) { lo[k] = hi[k] = _mm512_setzero_si512(); continue; }
                __m512i w;
                if (have >= 16) {
                    w = _mm512_loadu_si512((const void *)(row + g * 256 + 64 * k));
                } else {
                    const int64_t bytes = have - 4 * k >= 4 ? 64 : (have - 4 * k > 0 ? 16 * (have - 4 * k) : 0);
                    w = _mm512_maskz_loadu_epi8(bytes == 64 ? ~0ULL : (1ULL << bytes) - 1, row + g * 256 + 64 * k);
                }
                lo[k] = _mm512_and_si512(w, low);
                hi[k] = _mm512_and_si512(_mm512_srli_epi16(w, 4), low);
            }
            const __m512 ws = half ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(bm, hs + g * 16)) : _mm512_maskz_loadu_ps(bm, rs + g * 16);
            for (int t = 0; t < T; t++) {
                const int64_t tt = t0 + t;
                __m512i s = MOE_SUFFIX(q4_group_sums)(lo, hi, qa + (tt * groups + g) * 512, live);
                // The nibbles stand for n − 8: s − 8 · Σq.
                s = _mm512_sub_epi32(s, _mm512_slli_epi32(_mm512_maskz_loadu_epi32(bm, sums + tt * nb + g * 16), 3));
                const __m512 f = _mm512_cvtepi32_ps(s);
                const __m512 scale = _mm512_mul_ps(ws, _mm512_maskz_loadu_ps(bm, d + tt * nb + g * 16));
                acc[t] = _mm256_fmadd_ps(_mm512_castps512_ps256(f), _mm512_castps512_ps256(scale), acc[t]);
                acc[t] = _mm256_fmadd_ps(_mm512_extractf32x8_ps(f, 1), _mm512_extractf32x8_ps(scale, 1), acc[t]);
            }
        }
        for (int t = 0; t < T; t++) y[(t0 + t) * ldy + r] = MOE_SUFFIX(reduce)(acc[t]);
    }
}

/// The q4 product through `q4_rows` (see `q4_reorder`); false when its scratch is unavailable.
/// `half` as in `q4_rows`.
static inline __attribute__((always_inline)) int MOE_SUFFIX(gemm_q4_nibbles)(int half, const uint8_t *blocks, const void *wscales, int64_t cols,
                                                                            int64_t row_begin, int64_t row_end, const int8_t *q, const float *d,
                                                                            const int32_t *sums, int64_t n, float *y, int64_t ldy) {
    const int64_t groups = (cols / 32 + 15) / 16;
    int8_t *qa = (int8_t *)moe_thread_scratch((size_t)(n * groups * 512));
    if (!qa) return 0;
    MOE_SUFFIX(q4_reorder)(q, n, cols, qa);
    int64_t t0 = 0;
    for (; t0 + 4 <= n; t0 += 4) MOE_SUFFIX(q4_rows)(4, half, blocks, wscales, cols, row_begin, row_end, qa, d, sums, t0, y, ldy);
    switch (n - t0) {
    case 3: MOE_SUFFIX(q4_rows)(3, half, blocks, wscales, cols, row_begin, row_end, qa, d, sums, t0, y, ldy); break;
    case 2: MOE_SUFFIX(q4_rows)(2, half, blocks, wscales, cols, row_begin, row_end, qa, d, sums, t0, y, ldy); break;
    case 1: MOE_SUFFIX(q4_rows)(1, half, blocks, wscales, cols, row_begin, row_end, qa, d, sums, t0, y, ldy); break;
    default: break;
    }
    return 1;
}

void MOE_SUFFIX(moe_gemm_q4_q8)(MOE_GEMM_PARAMS(const uint8_t *blocks)) {
#ifdef MOE_GEMM_TRANSPOSED
    if (n >= MOE_GEMM_TRANSPOSED) {
        if (!moe_kernels_q4_transposed() && MOE_SUFFIX(gemm_q4_rows16)(0, blocks, wscales, cols, row_begin, row_end, q, d, sums, n, y, ldy)) return;
        MOE_SUFFIX(gemm_transposed)(0, blocks, wscales, cols, row_begin, row_end, q, d, sums, n, y, ldy);
        return;
    }
#endif
    if (!moe_kernels_q4_tile() && MOE_SUFFIX(gemm_q4_nibbles)(0, blocks, wscales, cols, row_begin, row_end, q, d, sums, n, y, ldy)) return;
    MOE_SUFFIX(gemm)(0, blocks, wscales, cols, row_begin, row_end, q, d, sums, n, y, ldy);
}

/// q4 blocks with float16 block scales (`moe_gemm_q4h_q8`): the nibble decode kernel and the
/// 16-row prefill tile read the float16 scales themselves (18 bytes a block, as Q4_0); the
/// variants kept for side-by-side timing (`MOE_Q4_KERNEL=tile|transposed`) and the fallback when
/// scratch is unavailable run row by row on widened scales (`moe_gemm_q4h_by_rows`). Every path
/// gives the bits of `moe_gemm_q4_q8` on the same scales widened to float32.
void MOE_SUFFIX(moe_gemm_q4h_q8)(MOE_GEMM_Q4H_PARAMS) {
#ifdef MOE_GEMM_TRANSPOSED
    if (n >= MOE_GEMM_TRANSPOSED) {
        if (!moe_kernels_q4_transposed() && MOE_SUFFIX(gemm_q4_rows16)(1, blocks, hscales, cols, row_begin, row_end, q, d, sums, n, y, ldy)) return;
        moe_gemm_q4h_by_rows(MOE_SUFFIX(moe_gemm_q4_q8), blocks, hscales, cols, row_begin, row_end, q, d, sums, n, y, ldy);
        return;
    }
#endif
    if (!moe_kernels_q4_tile() && MOE_SUFFIX(gemm_q4_nibbles)(1, blocks, hscales, cols, row_begin, row_end, q, d, sums, n, y, ldy)) return;
    moe_gemm_q4h_by_rows(MOE_SUFFIX(moe_gemm_q4_q8), blocks, hscales, cols, row_begin, row_end, q, d, sums, n, y, ldy);
}

void MOE_SUFFIX(moe_gemm_i8_q8)(MOE_GEMM_PARAMS(const int8_t *w)) {
#ifdef MOE_GEMM_TRANSPOSED
    if (n >= MOE_GEMM_TRANSPOSED) { MOE_SUFFIX(gemm_transposed)(1, (const uint8_t *)w, wscales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return; }
#endif
    MOE_SUFFIX(gemm)(1, (const uint8_t *)w, wscales, cols, row_begin, row_end, q, d, sums, n, y, ldy);
}

void MOE_SUFFIX(moe_gemm_mxfp4_q8)(MOE_GEMM_PARAMS(const uint8_t *blocks)) {
    // Row by row at every batch size (no transposed variant): the same bits either way.
    MOE_SUFFIX(gemm)(2, blocks, wscales, cols, row_begin, row_end, q, d, sums, n, y, ldy);
}
