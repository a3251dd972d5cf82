// Row-invariant bf16 products on AVX-512 (RowInvariantKernels' fast path for prefill chunks): every
// output is computed with exactly the arithmetic of the single-row bf16 GEMV (`BF16Kernels.gemv`,
// Swift SIMD8), so a prompt row gives the same bits in a chunk of any size as in a decode step.
//
// The GEMV's arithmetic for one output y[j, r] over blocks of 16 columns, in order:
//   even = fma(w_even(b), x_even(b), even), odd = fma(w_odd(b), x_odd(b), odd)   (8 lanes each)
//   v = even + odd (lane-wise); s = v0 + v1 + ... + v7 (left to right, SIMD.sum()); then for the
//   columns past the last block: s = s + (w[c] · x[c] summed left to right, not contracted).
// Here one 16-lane register holds [even | odd]: the weights of a block (16 bf16 in eight 32-bit lanes)
// widen to [lanes << 16 | lanes & 0xFFFF0000] and the permuted input (`BF16Kernels.permute`: per block
// the 8 even then the 8 odd elements) is loaded as it is, so each lane's FMA sequence is the GEMV's.
// Tiles of 4 weight rows × 6 input rows keep 24 accumulators in registers (4 widened weight blocks
// and 6 input loads feed 24 FMAs, where the Swift 2x2 tile at AVX2 width fed 8 from 6 loads and 4
// widenings); smaller tiles at the edges run the same per-output sequence.
#if defined(__x86_64__)
#include "CKernels.h"
#include <immintrin.h>

#pragma clang attribute push (__attribute__((target("avx2,fma,avx512f,avx512dq"))), apply_to = function)

#pragma clang fp contract(off)

static inline __attribute__((always_inline)) float bf16_to_float(uint16_t v) {
    union { uint32_t u; float f; } bits = { .u = (uint32_t)v << 16 };
    return bits.f;
}

/// The scalar tail of `BF16Kernels.tail`: products past the last whole block, summed in order.
static inline __attribute__((always_inline)) float bf16_tail(const uint16_t *w, const float *x, int64_t from, int64_t cols) {
    float s = 0;
    for (int64_t c = from; c < cols; c++) {
        float product = bf16_to_float(w[c]) * x[c];
        s = s + product;
    }
    return s;
}

/// One block's 16 bf16 weights as [even elements | odd elements] in float.
static inline __attribute__((always_inline)) __m512 bf16_block(const uint16_t *p) {
    const __m256i lanes = _mm256_loadu_si256((const __m256i *)p);
    const __m256i even = _mm256_slli_epi32(lanes, 16);
    const __m256i odd = _mm256_and_si256(lanes, _mm256_set1_epi32((int)0xFFFF0000u));
    return _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512(even), odd, 1));
}

/// The GEMV's final step for one accumulator: (even + odd), then the eight lanes left to right.
static inline __attribute__((always_inline)) float bf16_finish(__m512 acc) {
    const __m256 even = _mm512_castps512_ps256(acc);
    const __m256 odd = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1));
    float v[8];
    _mm256_storeu_ps(v, _mm256_add_ps(even, odd));
    float s = -0.0f;
    for (int i = 0; i < 8; i++) s = s + v[i];
    return s;
}

// y[j * y_stride + i] for weight rows w + i * cols (i < NW) and inputs j < NX (permuted px + j * stride,
// original x + j * cols for the tail).
static inline __attribute__((always_inline)) void bf16_tile(const uint16_t *w, const float *px, int64_t stride, const float *x,
                                                             int64_t cols, float *y, int64_t y_stride, const int NW, const int NX) {
    __m512 acc[4][6];
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++) acc[i][j] = _mm512_setzero_ps();
    const int64_t blocks = cols / 16;
    for (int64_t b = 0; b < blocks; b++) {
        __m512 wv[4];
        for (int i = 0; i < NW; i++) wv[i] = bf16_block(w + i * cols + b * 16);
        for (int j = 0; j < NX; j++) {
            const __m512 xv = _mm512_loadu_ps(px + j * stride + b * 16);
            for (int i = 0; i < NW; i++) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++) {
            float s = bf16_finish(acc[i][j]);
            if (blocks * 16 < cols) s = s + bf16_tail(w + i * cols, x + j * cols, blocks * 16, cols);
            y[j * y_stride + i] = s;
        }
}

// Weight rows [r, end) against inputs j..j+NX-1: four rows at a time, then one by one.
static inline __attribute__((always_inline)) void bf16_rows_against(const uint16_t *w, int64_t r, int64_t end, const float *px,
                                                                     int64_t stride, const float *x, int64_t cols, float *y,
                                                                     int64_t y_stride, const int NX) {
    for (; r + 4 <= end; r += 4) bf16_tile(w + r * cols, px, stride, x, cols, y + r, y_stride, 4, NX);
    for (; r < end; r++) bf16_tile(w + r * cols, px, stride, x, cols, y + r, y_stride, 1, NX);
}

void moe_bf16_rows_avx512(const uint16_t *w, int64_t rows, int64_t cols, const float *px, int64_t stride, const float *x,
                          int64_t count, float *y, int64_t row_begin, int64_t row_end) {
    // A tile of weight rows small enough to stay in L2 while every group of six inputs sweeps it.
    int64_t tile_rows = (96 << 10) / (cols > 0 ? 2 * cols : 1);
    if (tile_rows < 8) tile_rows = 8;
    for (int64_t tile = row_begin; tile < row_end; tile += tile_rows) {
        const int64_t end = tile + tile_rows < row_end ? tile + tile_rows : row_end;
        int64_t j = 0;
        for (; j + 6 <= count; j += 6)
            bf16_rows_against(w, tile, end, px + j * stride, stride, x + j * cols, cols, y + j * rows, rows, 6);
        switch (count - j) {
        case 5: bf16_rows_against(w, tile, end, px + j * stride, stride, x + j * cols, cols, y + j * rows, rows, 5); break;
        case 4: bf16_rows_against(w, tile, end, px + j * stride, stride, x + j * cols, cols, y + j * rows, rows, 4); break;
        case 3: bf16_rows_against(w, tile, end, px + j * stride, stride, x + j * cols, cols, y + j * rows, rows, 3); break;
        case 2: bf16_rows_against(w, tile, end, px + j * stride, stride, x + j * cols, cols, y + j * rows, rows, 2); break;
        case 1: bf16_rows_against(w, tile, end, px + j * stride, stride, x + j * cols, cols, y + j * rows, rows, 1); break;
        default: break;
        }
    }
}
#pragma clang attribute pop
#else
#include "CKernels.h"
#include <stdlib.h>
// Not x86-64: moe_kernels_detect() never reports AVX-512, so this is never called.
void moe_bf16_rows_avx512(const uint16_t *w, int64_t rows, int64_t cols, const float *px, int64_t stride, const float *x,
                          int64_t count, float *y, int64_t row_begin, int64_t row_end) {
    (void)w; (void)rows; (void)cols; (void)px; (void)stride; (void)x; (void)count; (void)y; (void)row_begin; (void)row_end;
    abort();
}
#endif
