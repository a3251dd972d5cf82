// AVX-512 kernels at two levels from one body (avx512_body.h): AVX512-BW (vpmaddubsw +
// vpmaddwd on 512-bit vectors) and AVX512-VNNI (vpdpbusd). Each is compiled for its own
// instruction set by target attributes and called only when moe_kernels_detect() allows it.
#if defined(__x86_64__)
#include "internal.h"
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#pragma clang attribute push (__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq"))), apply_to = function)
#define MOE_SUFFIX(name) name##_avx512
#define MOE_DOT(w, a) _mm512_madd_epi16(_mm512_maddubs_epi16((w), (a)), _mm512_set1_epi16(1))
#define MOE_DOT_ACC(acc, w, a) _mm512_add_epi32((acc), MOE_DOT(w, a))
#include "avx512_body.h"
#undef MOE_SUFFIX
#undef MOE_DOT
#undef MOE_DOT_ACC
#pragma clang attribute pop

#pragma clang attribute push (__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), apply_to = function)
#define MOE_SUFFIX(name) name##_avx512vnni
#define MOE_DOT(w, a) _mm512_dpbusd_epi32(_mm512_setzero_si512(), (w), (a))
#define MOE_DOT_ACC(acc, w, a) _mm512_dpbusd_epi32((acc), (w), (a))
// From this many tokens the weights are transposed per row (see gemm_transposed).
#define MOE_GEMM_TRANSPOSED 8
#include "avx512_body.h"
#undef MOE_GEMM_TRANSPOSED
#undef MOE_SUFFIX
#undef MOE_DOT
#undef MOE_DOT_ACC
#pragma clang attribute pop
#endif
