// GGUF Q8_0 weights against 8-bit activation blocks (issue 22 item 2), on the blocks as the file
// stores them (`block_q8_0`: a float16 scale, then 32 int8 weights; 34 bytes), no conversion.
//
// ggml's own arithmetic for Q8_0 × Q8_0 on x86 (`ggml_vec_dot_q8_0_q8_0` for one token, llamafile's
// `tinyBLAS_Q0_AVX` for more: the same steps), so that a product equals llama.cpp's bit for bit:
// eight float lanes, lane k = Σ_b fma(d_w · d_x, (float)Σ_{i=4k..4k+3} w_i · q_i) over the blocks in
// order, then ggml's `hsum_float_8`. (The canonical q4 steps, one exact int32 sum per block into
// lane b mod 8, differ from it in the last bits, which DeepSeek-V3's near-tied expert groups
// amplify: issue 21.) The AVX2 kernel serves every x86 level above portable (the same bits).
#include "CKernels.h"
#include "internal.h"
#include <string.h>

/// Bytes of one `block_q8_0`.
#define Q8_0_BLOCK_BYTES 34

static inline float block_scale(const uint8_t *block) {
    uint16_t h;
    memcpy(&h, block, 2);
    return moe_f16_to_f32(h);
}

static void q8_0_portable(const uint8_t *w, int64_t cols, int64_t row_begin, int64_t row_end,
                          const int8_t *q, const float *d, int64_t n, float *y, int64_t ldy) {
    const int64_t nb = cols / MOE_KERNEL_BLOCK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = w + r * nb * Q8_0_BLOCK_BYTES;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *qt = q + t * cols;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *block = row + b * Q8_0_BLOCK_BYTES;
                const int8_t *wv = (const int8_t *)(block + 2);
                const float scale = block_scale(block) * d[t * nb + b];
                // Lane k: the block's weights 4k..4k+3 (one int32 lane of vpmaddubsw + vpmaddwd).
                for (int k = 0; k < 8; k++) {
                    int32_t s = 0;
                    for (int i = 4 * k; i < 4 * k + 4; i++) s += (int32_t)wv[i] * qt[b * 32 + i];
                    acc[k] = __builtin_fmaf(scale, (float)s, acc[k]);
                }
            }
            y[t * ldy + r] = moe_reduce8(acc);
        }
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)

/// The sum of the eight lanes as ggml's `hsum_float_8`: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
static inline float q8_0_reduce(__m256 acc) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/// One block (34 bytes at `block`) against one activation block (`a`, scale `dt`), as ggml's
/// `ggml_vec_dot_q8_0_q8_0` (AVX2) and llamafile's `tinyBLAS_Q0_AVX` take it: eight int32 sums of
/// four products, each to float, fused-multiply-added with d_w·d_x into its lane.
static inline __attribute__((always_inline)) __m256 q8_0_block(const uint8_t *block, __m256i a, float dt, __m256 acc) {
    uint16_t h;
    memcpy(&h, block, 2);
    const float ws = _cvtsh_ss(h); // exact
    const __m256i w = _mm256_loadu_si256((const __m256i *)(block + 2));
    // |w| is unsigned and w's sign moves onto the activation (|w| ≤ 128, |q| ≤ 127: no s16 overflow).
    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)),
                                        _mm256_set1_epi16(1));
    return _mm256_fmadd_ps(_mm256_set1_ps(ws * dt), _mm256_cvtepi32_ps(p), acc);
}

static void q8_0_avx2(const uint8_t *w, int64_t cols, int64_t row_begin, int64_t row_end,
                      const int8_t *q, const float *d, int64_t n, float *y, int64_t ldy) {
    const int64_t nb = cols / MOE_KERNEL_BLOCK, row_bytes = nb * Q8_0_BLOCK_BYTES;
    int64_t r = row_begin;
    // Four rows at a time: four independent accumulator chains hide the fused multiply-add's latency
    // (each output's steps are unchanged, so the bits are those of one row at a time).
    for (; r + 4 <= row_end; r += 4) {
        const uint8_t *r0 = w + r * row_bytes, *r1 = r0 + row_bytes, *r2 = r1 + row_bytes, *r3 = r2 + row_bytes;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *qt = q + t * cols;
            const float *dt = d + t * nb;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t b = 0; b < nb; b++) {
                const __m256i a = _mm256_loadu_si256((const __m256i *)(qt + 32 * b));
                const int64_t o = b * Q8_0_BLOCK_BYTES;
                a0 = q8_0_block(r0 + o, a, dt[b], a0);
                a1 = q8_0_block(r1 + o, a, dt[b], a1);
                a2 = q8_0_block(r2 + o, a, dt[b], a2);
                a3 = q8_0_block(r3 + o, a, dt[b], a3);
            }
            float *out = y + t * ldy + r;
            out[0] = q8_0_reduce(a0); out[1] = q8_0_reduce(a1); out[2] = q8_0_reduce(a2); out[3] = q8_0_reduce(a3);
        }
    }
    for (; r < row_end; r++) {
        const uint8_t *row = w + r * row_bytes;
        for (int64_t t = 0; t < n; t++) {
            const int8_t *qt = q + t * cols;
            const float *dt = d + t * nb;
            __m256 acc = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; b++)
                acc = q8_0_block(row + b * Q8_0_BLOCK_BYTES, _mm256_loadu_si256((const __m256i *)(qt + 32 * b)), dt[b], acc);
            y[t * ldy + r] = q8_0_reduce(acc);
        }
    }
}

#pragma clang attribute pop
#endif

void moe_gemm_q8_0_q8(int level, const uint8_t *blocks, int64_t cols, int64_t row_begin, int64_t row_end,
                      const int8_t *q, const float *d, int64_t n, float *y, int64_t ldy) {
#if defined(__x86_64__)
    if (level >= MOE_KERNEL_AVX2) { q8_0_avx2(blocks, cols, row_begin, row_end, q, d, n, y, ldy); return; }
#endif
    (void)level;
    q8_0_portable(blocks, cols, row_begin, row_end, q, d, n, y, ldy);
}
