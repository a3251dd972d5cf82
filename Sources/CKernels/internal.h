// Per-level entry points behind the dispatch in portable.c (not part of the module's API).
#ifndef MOE_CKERNELS_INTERNAL_H
#define MOE_CKERNELS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define MOE_GEMM_PARAMS(W) W, const float *wscales, int64_t cols, int64_t row_begin, int64_t row_end, \
    const int8_t *q, const float *d, const int32_t *sums, int64_t n, float *y, int64_t ldy

/// The parameters of the q4 kernels with float16 block scales (`moe_gemm_q4h_q8`).
#define MOE_GEMM_Q4H_PARAMS const uint8_t *blocks, const uint16_t *hscales, int64_t cols, int64_t row_begin, int64_t row_end, \
    const int8_t *q, const float *d, const int32_t *sums, int64_t n, float *y, int64_t ldy

/// A float-scale q4 kernel (`moe_gemm_q4_q8_<level>`).
typedef void (*moe_gemm_q4_fn)(const uint8_t *blocks, const float *wscales, int64_t cols, int64_t row_begin, int64_t row_end,
                               const int8_t *q, const float *d, const int32_t *sums, int64_t n, float *y, int64_t ldy);

/// `moe_gemm_q4h_q8` row by row through the float-scale `kernel`: each row's float16 scales widened
/// (exactly) into a stack buffer first. For the levels and variants without a float16 path of their own.
void moe_gemm_q4h_by_rows(moe_gemm_q4_fn kernel, MOE_GEMM_Q4H_PARAMS);

void moe_gemm_q4h_q8_portable(MOE_GEMM_Q4H_PARAMS);
#if defined(__x86_64__)
void moe_gemm_q4h_q8_avx2(MOE_GEMM_Q4H_PARAMS);
void moe_gemm_q4h_q8_avx512(MOE_GEMM_Q4H_PARAMS);
void moe_gemm_q4h_q8_avx512vnni(MOE_GEMM_Q4H_PARAMS);
#endif

/// A float16 value (IEEE binary16 bits) as float32: exact for every value, subnormals, infinities and NaN included.
static inline float moe_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
    uint32_t bits;
    if (exponent == 0) {
        const float magnitude = (float)mantissa * 0x1p-24f; // subnormal (or zero): exact in float32
        __builtin_memcpy(&bits, &magnitude, 4);
        bits |= sign;
    } else if (exponent == 31) {
        bits = sign | 0x7F800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    }
    float f;
    __builtin_memcpy(&f, &bits, 4);
    return f;
}

void moe_quantize_q8_portable(const float *x, int64_t n, int64_t cols, int8_t *q, float *d, int32_t *sums);
#if defined(__x86_64__)
void moe_quantize_q8_avx2(const float *x, int64_t n, int64_t cols, int8_t *q, float *d, int32_t *sums);
#endif
void moe_gemm_q4_q8_portable(MOE_GEMM_PARAMS(const uint8_t *blocks));
void moe_gemm_i8_q8_portable(MOE_GEMM_PARAMS(const int8_t *w));
#if defined(__x86_64__)
void moe_gemm_q4_q8_avx2(MOE_GEMM_PARAMS(const uint8_t *blocks));
void moe_gemm_i8_q8_avx2(MOE_GEMM_PARAMS(const int8_t *w));
void moe_gemm_q4_q8_avx512(MOE_GEMM_PARAMS(const uint8_t *blocks));
void moe_gemm_i8_q8_avx512(MOE_GEMM_PARAMS(const int8_t *w));
void moe_gemm_q4_q8_avx512vnni(MOE_GEMM_PARAMS(const uint8_t *blocks));
void moe_gemm_i8_q8_avx512vnni(MOE_GEMM_PARAMS(const int8_t *w));
#endif
// MXFP4 (17-byte block_mxfp4 blocks; wscales unused, the scales are the blocks' exponents).
void moe_gemm_mxfp4_q8_portable(MOE_GEMM_PARAMS(const uint8_t *blocks));
#if defined(__x86_64__)
void moe_gemm_mxfp4_q8_avx2(MOE_GEMM_PARAMS(const uint8_t *blocks));
void moe_gemm_mxfp4_q8_avx512(MOE_GEMM_PARAMS(const uint8_t *blocks));
void moe_gemm_mxfp4_q8_avx512vnni(MOE_GEMM_PARAMS(const uint8_t *blocks));
/// The nibble kernel (mxfp4_avx512.c; needs AVX512-VBMI besides VNNI): 0 when its scratch is unavailable.
int moe_gemm_mxfp4_q8_avx512vbmi(MOE_GEMM_PARAMS(const uint8_t *blocks));
#endif

/// Bytes of one `block_mxfp4`: the e8m0 exponent, then 16 bytes of nibbles.
#define MOE_MXFP4_BLOCK_BYTES 17

/// `2^(e-128)`: an MXFP4 block's scale halved, because the integer kernels dot the doubled e2m1
/// values {0, 1, 2, 3, 4, 6, 8, 12} (and negatives) with the activations. Exact: e = 1 gives the
/// subnormal 2^-127, e = 0 2^-128, 255 NaN (the OCP e8m0 NaN).
static inline float moe_mxfp4_half_scale(uint8_t e) {
    const uint32_t bits = e == 255 ? 0x7FC00000u : (e >= 2 ? (uint32_t)(e - 1) << 23 : 0x00200000u << e);
    float f;
    __builtin_memcpy(&f, &bits, 4);
    return f;
}

/// The half scales of `count` (≤ 8) consecutive blocks from `blocks`, zero beyond `count`.
static inline void moe_mxfp4_half_scales(const uint8_t *blocks, int64_t count, float out[8]) {
    for (int k = 0; k < 8; k++) out[k] = k < count ? moe_mxfp4_half_scale(blocks[k * MOE_MXFP4_BLOCK_BYTES]) : 0.0f;
}

/// This thread's scratch of at least `bytes` bytes, 64-byte aligned, kept for the thread's next
/// call (grown when too small; NULL if that fails): the GEMMs' packed operands without an
/// allocation per call. Fresh large allocations were mmapped and zeroed page by page: 7% of a
/// prefill's samples went to clear_page and page faults.
void *moe_thread_scratch(size_t bytes);

/// Nonzero with `MOE_Q4_KERNEL=tile`: the AVX-512 levels multiply q4 decode products with the
/// earlier row-by-row tile kernel instead of the nibble kernel (same bits; for side-by-side timing).
int moe_kernels_q4_tile(void);

/// Nonzero with `MOE_Q4_KERNEL=transposed`: the VNNI level multiplies q4 prefill products (8 or
/// more tokens) with the earlier transposed GEMM instead of the 16-row tile kernel (same bits;
/// for side-by-side timing).
int moe_kernels_q4_transposed(void);

/// The canonical final sum of the eight block-lane accumulators (see CKernels.h).
static inline float moe_reduce8(const float acc[8]) {
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

#endif
