// Run-time dispatch, activation quantisation and the portable reference kernels.
#include "CKernels.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#if defined(__x86_64__)
static uint64_t xgetbv0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

/// CPUID leaf 7 sub-leaf `sub` registers, or zeros when the leaf is absent.
static void leaf7(uint32_t sub, uint32_t *ebx, uint32_t *ecx, uint32_t *edx, uint32_t *eax) {
    uint32_t a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_max(0, 0) >= 7) __cpuid_count(7, sub, a, b, c, d);
    *eax = a; *ebx = b; *ecx = c; *edx = d;
}
#endif

int moe_kernels_detect(void) {
#if defined(__x86_64__)
    uint32_t a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return MOE_KERNEL_PORTABLE;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    if (!osxsave || !avx || !fma) return MOE_KERNEL_PORTABLE;
    // The OS must save the YMM (XCR0 bits 1-2) and, for AVX-512, opmask and ZMM state (bits 5-7).
    const uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return MOE_KERNEL_PORTABLE;
    uint32_t eax7, ebx7, ecx7, edx7;
    leaf7(0, &ebx7, &ecx7, &edx7, &eax7);
    const int avx2 = (ebx7 >> 5) & 1;
    if (!avx2) return MOE_KERNEL_PORTABLE;
    const int avx512f = (ebx7 >> 16) & 1, avx512bw = (ebx7 >> 30) & 1, avx512vl = (ebx7 >> 31) & 1;
    const int avx512vnni = (ecx7 >> 11) & 1;
    if (!(avx512f && avx512bw && avx512vl) || (xcr0 & 0xE6) != 0xE6) return MOE_KERNEL_AVX2;
    return avx512vnni ? MOE_KERNEL_AVX512_VNNI : MOE_KERNEL_AVX512;
#else
    return MOE_KERNEL_PORTABLE;
#endif
}

static _Thread_local void *scratch_memory;
static _Thread_local size_t scratch_capacity;
static _Thread_local int serial_depth;

void *moe_thread_scratch(size_t bytes) {
    if (bytes > scratch_capacity) {
        free(scratch_memory);
        // At least 256 KiB: a scratch of a few KiB from the heap (the 16-row prefill kernel's)
        // left the decode kernels after it ~20% slower on the demo model (A/B through `serve`),
        // where the larger scratch of the former prefill kernel did not, nor a 1 MiB request
        // (why is not established: the decode uses only 512 bytes of it either way).
        const size_t wanted = bytes < ((size_t)256 << 10) ? ((size_t)256 << 10) : bytes;
        const size_t rounded = (wanted + 63) & ~(size_t)63;
        scratch_memory = aligned_alloc(64, rounded);
        scratch_capacity = scratch_memory ? rounded : 0;
    }
    return scratch_memory;
}

int moe_kernels_q4_tile(void) {
    static int cached = -1; // read once; a benign race (every thread computes the same value)
    if (cached < 0) {
        const char *v = getenv("MOE_Q4_KERNEL");
        cached = v && strcmp(v, "tile") == 0;
    }
    return cached;
}

int moe_kernels_q4_transposed(void) {
    static int cached = -1; // as moe_kernels_q4_tile
    if (cached < 0) {
        const char *v = getenv("MOE_Q4_KERNEL");
        cached = v && strcmp(v, "transposed") == 0;
    }
    return cached;
}

void moe_kernels_serial_begin(void) { serial_depth++; }
void moe_kernels_serial_end(void) { serial_depth--; }
int moe_kernels_serial(void) { return serial_depth; }

int moe_kernels_has_avx512_bf16(void) {
#if defined(__x86_64__)
    if (moe_kernels_detect() < MOE_KERNEL_AVX512) return 0;
    uint32_t eax, ebx, ecx, edx;
    leaf7(1, &ebx, &ecx, &edx, &eax);
    return (eax >> 5) & 1;
#else
    return 0;
#endif
}

/// `x` rounded to the nearest float16 value (ties to even) when that is a normal float16
/// (2^-14 ≤ |x| < 65520); otherwise `x` unchanged.
static inline float moe_round_to_f16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    const uint32_t exponent = (u >> 23) & 0xFF;
    if (exponent < 127 - 14 || exponent > 127 + 15) return x;
    u += 0x0FFFu + ((u >> 13) & 1u);
    u &= ~0x1FFFu;
    memcpy(&x, &u, 4);
    return x;
}

void moe_quantize_q8(int level, const float *x, int64_t n, int64_t cols, int8_t *q, float *d, int32_t *sums) {
#if defined(__x86_64__)
    if (level >= MOE_KERNEL_AVX2) moe_quantize_q8_avx2(x, n, cols, q, d, sums);
    else
#endif
    moe_quantize_q8_portable(x, n, cols, q, d, sums);
    // Each block's scale is then rounded to float16, as llama.cpp's Q8_0 stores it (`block_q8_0.d`),
    // the q computed with the unrounded one: a GGUF's Q4_0 and MXFP4 products are then llama.cpp's
    // products up to float summation order (its |Δ log-prob| of 0.00-0.07 on the Q4_0 fixtures, 0.11-0.50
    // with float32 scales). A block whose scale is not a normal float16 keeps it in float32.
    for (int64_t i = 0; i < n * (cols / MOE_KERNEL_BLOCK); i++) d[i] = moe_round_to_f16(d[i]);
}

void moe_quantize_q8_portable(const float *x, int64_t n, int64_t cols, int8_t *q, float *d, int32_t *sums) {
    const int64_t blocks = cols / MOE_KERNEL_BLOCK;
    for (int64_t t = 0; t < n; t++) {
        for (int64_t b = 0; b < blocks; b++) {
            const float *src = x + t * cols + b * MOE_KERNEL_BLOCK;
            int8_t *dst = q + t * cols + b * MOE_KERNEL_BLOCK;
            float amax = 0;
            for (int i = 0; i < MOE_KERNEL_BLOCK; i++) amax = fmaxf(amax, fabsf(src[i]));
            const float scale = amax / 127.0f;
            const float inverse = amax != 0 ? 127.0f / amax : 0.0f; // llama.cpp's Q8_0 (127/amax, not 1/d: a q-step flip a few per million)
            int32_t sum = 0;
            for (int i = 0; i < MOE_KERNEL_BLOCK; i++) {
                // lrintf rounds half to even in the default mode, as cvtps2dq would.
                long v = lrintf(src[i] * inverse);
                v = v > 127 ? 127 : (v < -127 ? -127 : v);
                dst[i] = (int8_t)v;
                sum += (int32_t)v;
            }
            d[t * blocks + b] = scale;
            sums[t * blocks + b] = sum;
        }
    }
}

void moe_gemm_q4_q8_portable(MOE_GEMM_PARAMS(const uint8_t *blocks)) {
    (void)sums;
    const int64_t nb = cols / MOE_KERNEL_BLOCK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = blocks + r * nb * 16;
        const float *rs = wscales + r * nb;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *qt = q + t * cols;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t b = 0; b < nb; b++) {
                int32_t s = 0;
                for (int j = 0; j < 16; j++) {
                    const uint8_t byte = row[b * 16 + j];
                    s += ((int32_t)(byte & 0x0F) - 8) * qt[b * 32 + j];
                    s += ((int32_t)(byte >> 4) - 8) * qt[b * 32 + j + 16];
                }
                const float scale = rs[b] * d[t * nb + b];
                acc[b % 8] = fmaf((float)s, scale, acc[b % 8]);
            }
            y[t * ldy + r] = moe_reduce8(acc);
        }
    }
}

void moe_gemm_q4h_q8_portable(MOE_GEMM_Q4H_PARAMS) {
    (void)sums;
    const int64_t nb = cols / MOE_KERNEL_BLOCK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = blocks + r * nb * 16;
        const uint16_t *hs = hscales + r * nb;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *qt = q + t * cols;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t b = 0; b < nb; b++) {
                int32_t s = 0;
                for (int j = 0; j < 16; j++) {
                    const uint8_t byte = row[b * 16 + j];
                    s += ((int32_t)(byte & 0x0F) - 8) * qt[b * 32 + j];
                    s += ((int32_t)(byte >> 4) - 8) * qt[b * 32 + j + 16];
                }
                const float scale = moe_f16_to_f32(hs[b]) * d[t * nb + b];
                acc[b % 8] = fmaf((float)s, scale, acc[b % 8]);
            }
            y[t * ldy + r] = moe_reduce8(acc);
        }
    }
}

void moe_gemm_q4h_by_rows(moe_gemm_q4_fn kernel, MOE_GEMM_Q4H_PARAMS) {
    const int64_t nb = cols / MOE_KERNEL_BLOCK;
    // Not the thread scratch: the kernel may grow (move) it.
    float local[1024];
    float *wide = nb <= 1024 ? local : (float *)malloc((size_t)nb * sizeof(float));
    if (!wide) { moe_gemm_q4h_q8_portable(blocks, hscales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return; }
    for (int64_t r = row_begin; r < row_end; r++) {
        for (int64_t b = 0; b < nb; b++) wide[b] = moe_f16_to_f32(hscales[r * nb + b]);
        // Row r alone as row 0 of a one-row matrix: each output's arithmetic is fixed, so the bits are the same.
        kernel(blocks + r * nb * 16, wide, cols, 0, 1, q, d, sums, n, y + r, ldy);
    }
    if (wide != local) free(wide);
}

void moe_gemm_q4h_q8(int level, const uint8_t *blocks, const uint16_t *scales, int64_t cols, int64_t row_begin, int64_t row_end,
                     const int8_t *q, const float *d, const int32_t *sums, int64_t n, float *y, int64_t ldy) {
    switch (level) {
#if defined(__x86_64__)
    case MOE_KERNEL_AVX512_VNNI: moe_gemm_q4h_q8_avx512vnni(blocks, scales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
    case MOE_KERNEL_AVX512: moe_gemm_q4h_q8_avx512(blocks, scales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
    case MOE_KERNEL_AVX2: moe_gemm_q4h_q8_avx2(blocks, scales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
#endif
    default: moe_gemm_q4h_q8_portable(blocks, scales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
    }
}

void moe_gemm_i8_q8_portable(MOE_GEMM_PARAMS(const int8_t *w)) {
    (void)sums;
    const int64_t nb = cols / MOE_KERNEL_BLOCK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const int8_t *row = w + r * cols;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *qt = q + t * cols;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t b = 0; b < nb; b++) {
                int32_t s = 0;
                for (int i = 0; i < 32; i++) s += (int32_t)row[b * 32 + i] * qt[b * 32 + i];
                acc[b % 8] = fmaf((float)s, d[t * nb + b], acc[b % 8]);
            }
            y[t * ldy + r] = moe_reduce8(acc) * wscales[r];
        }
    }
}

void moe_gemm_q4_q8(int level, const uint8_t *blocks, const float *scales, int64_t cols, int64_t row_begin, int64_t row_end,
                    const int8_t *q, const float *d, const int32_t *sums, int64_t n, float *y, int64_t ldy) {
    switch (level) {
#if defined(__x86_64__)
    case MOE_KERNEL_AVX512_VNNI: moe_gemm_q4_q8_avx512vnni(blocks, scales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
    case MOE_KERNEL_AVX512: moe_gemm_q4_q8_avx512(blocks, scales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
    case MOE_KERNEL_AVX2: moe_gemm_q4_q8_avx2(blocks, scales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
#endif
    default: moe_gemm_q4_q8_portable(blocks, scales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
    }
}

void moe_gemm_i8_q8(int level, const int8_t *w, const float *row_scales, int64_t cols, int64_t row_begin, int64_t row_end,
                    const int8_t *q, const float *d, const int32_t *sums, int64_t n, float *y, int64_t ldy) {
    switch (level) {
#if defined(__x86_64__)
    case MOE_KERNEL_AVX512_VNNI: moe_gemm_i8_q8_avx512vnni(w, row_scales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
    case MOE_KERNEL_AVX512: moe_gemm_i8_q8_avx512(w, row_scales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
    case MOE_KERNEL_AVX2: moe_gemm_i8_q8_avx2(w, row_scales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
#endif
    default: moe_gemm_i8_q8_portable(w, row_scales, cols, row_begin, row_end, q, d, sums, n, y, ldy); return;
    }
}
