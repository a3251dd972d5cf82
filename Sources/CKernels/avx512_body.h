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
/// sign moves onto the activations.
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
    if (kind == 0) {
        s = _mm256_sub_epi32(s, _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)st), 3));
        scale = _mm256_mul_ps(_mm256_loadu_ps(ws), scale);
    }
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc);
}

static inline __attribute__((always_inline)) void MOE_SUFFIX(unpack)(int kind, const uint8_t *p, __m512i w[4], __mmask64 neg[4]) {
    for (int k = 0; k < 4; k++) {
        if (kind == 0) {
            w[k] = MOE_SUFFIX(expand_q4)(p + 32 * k);
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
    const int64_t wbytes = kind == 0 ? 16 : 32;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t g = 0; g < groups; g++) {
        __m512i w[4];
        __mmask64 neg[4];
        MOE_SUFFIX(unpack)(kind, row + g * 8 * wbytes, w, neg);
        for (int t = 0; t < T; t++) {
            const int64_t tt = t0 + t;
            acc[t] = MOE_SUFFIX(group)(kind, w, neg, q + tt * cols + g * 256, d + tt * nb + g * 8, sums + tt * nb + g * 8,
                                       kind == 0 ? rs + g * 8 : 0, acc[t]);
        }
    }
    if (rem) {
        // Zero-padded copies of the partial last group (see avx2.c).
        uint8_t wb[8 * 32] = {0};
        float wsb[8] = {0};
        memcpy(wb, row + groups * 8 * wbytes, (size_t)(rem * wbytes));
        if (kind == 0) memcpy(wsb, rs + groups * 8, (size_t)rem * sizeof(float));
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
        y[(t0 + t) * ldy] = kind == 0 ? v : v * row_scale;
    }
}

static inline __attribute__((always_inline)) void MOE_SUFFIX(gemm)(int kind, const uint8_t *w, const float *wscales, int64_t cols,
                                                                   int64_t row_begin, int64_t row_end, const int8_t *q, const float *d,
                                                                   const int32_t *sums, int64_t n, float *y, int64_t ldy) {
    const int64_t nb = cols / 32;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = kind == 0 ? w + r * nb * 16 : w + r * cols;
        const float *rs = kind == 0 ? wscales + r * nb : 0;
        const float row_scale = kind == 0 ? 0 : wscales[r];
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

void MOE_SUFFIX(moe_gemm_q4_q8)(MOE_GEMM_PARAMS(const uint8_t *blocks)) {
    MOE_SUFFIX(gemm)(0, blocks, wscales, cols, row_begin, row_end, q, d, sums, n, y, ldy);
}

void MOE_SUFFIX(moe_gemm_i8_q8)(MOE_GEMM_PARAMS(const int8_t *w)) {
    MOE_SUFFIX(gemm)(1, (const uint8_t *)w, wscales, cols, row_begin, row_end, q, d, sums, n, y, ldy);
}
