// SiLU-gated products, silu(a)·b = a / (1 + e^(−a)) · b, for the experts' activations: the scalar
// `expf` made this 8% of decode CPU time at 32 sequences (perf, docs/BENCHMARKS.md session 20).
// e^x here: +∞ above 88 (as expf overflows there, so silu of a very negative value is −0);
// otherwise x clamped below at −87; n = round(x·log2 e); r = x − n·ln 2 (two fused steps);
// e^r by its Taylor polynomial to degree 7 in Horner form with fused multiply-adds (truncation
// < 1e-8 relative for |r| ≤ ln 2 / 2); times 2^n built in the exponent bits. The portable and the
// AVX2 code run exactly these operations (fmaf and vfmadd round once, alike; division and
// products are IEEE), so every level gives the same bits.
#include "CKernels.h"
#include "internal.h"
#include <math.h>
#include <stdint.h>
#include <string.h>
#pragma STDC FP_CONTRACT OFF

#define SILU_MAX_X 88.0f
#define SILU_MIN_X (-87.0f)
#define SILU_LOG2E 1.44269504088896341f
#define SILU_LN2_HI 0.693359375f
#define SILU_LN2_LO (-2.12194440e-4f)
#define C7 (1.0f / 5040.0f)
#define C6 (1.0f / 720.0f)
#define C5 (1.0f / 120.0f)
#define C4 (1.0f / 24.0f)
#define C3 (1.0f / 6.0f)
#define C2 0.5f

static inline float exp_portable(float x) {
    if (x > SILU_MAX_X) return INFINITY;
    x = fminf(fmaxf(x, SILU_MIN_X), SILU_MAX_X);
    const float n = nearbyintf(x * SILU_LOG2E);
    float r = fmaf(n, -SILU_LN2_HI, x);
    r = fmaf(n, -SILU_LN2_LO, r);
    float p = C7;
    p = fmaf(p, r, C6);
    p = fmaf(p, r, C5);
    p = fmaf(p, r, C4);
    p = fmaf(p, r, C3);
    p = fmaf(p, r, C2);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static void silu_mul_portable(float *a, const float *b, int64_t count) {
    for (int64_t i = 0; i < count; i++) {
        const float v = a[i];
        a[i] = v / (1.0f + exp_portable(-v)) * b[i];
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
#pragma clang attribute push (__attribute__((target("avx2,fma"))), apply_to = function)
static void silu_mul_avx2(float *a, const float *b, int64_t count) {
    int64_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= count; i += 8) {
        const __m256 v = _mm256_loadu_ps(a + i);
        __m256 x = _mm256_sub_ps(_mm256_setzero_ps(), v);
        const __m256 overflow = _mm256_cmp_ps(x, _mm256_set1_ps(SILU_MAX_X), _CMP_GT_OQ); // false for NaN, as `>`
        // fminf(fmaxf(x, lo), hi): for NaN x fmaxf gives lo; maxps with x first gives lo as well.
        x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(SILU_MIN_X)), _mm256_set1_ps(SILU_MAX_X));
        const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(SILU_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-SILU_LN2_HI), x);
        r = _mm256_fmadd_ps(n, _mm256_set1_ps(-SILU_LN2_LO), r);
        __m256 p = _mm256_set1_ps(C7);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C6));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C5));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C4));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C2));
        p = _mm256_fmadd_ps(p, r, one);
        p = _mm256_fmadd_ps(p, r, one);
        const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        const __m256 e = _mm256_blendv_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(bits)), _mm256_set1_ps(INFINITY), overflow);
        const __m256 s = _mm256_div_ps(v, _mm256_add_ps(one, e));
        _mm256_storeu_ps(a + i, _mm256_mul_ps(s, _mm256_loadu_ps(b + i)));
    }
    silu_mul_portable(a + i, b + i, count - i);
}
#pragma clang attribute pop
#endif

void moe_silu_mul(int level, float *a, const float *b, int64_t count) {
#if defined(__x86_64__)
    if (level >= MOE_KERNEL_AVX2) { silu_mul_avx2(a, b, count); return; }
#endif
    silu_mul_portable(a, b, count);
}

float moe_silu_exp(float x) { return exp_portable(x); }
