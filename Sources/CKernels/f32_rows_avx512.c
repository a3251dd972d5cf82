// Row-invariant f32 products on AVX-512 (F32RowInvariantKernels' fast path): every output is
// computed with one arithmetic whatever the number of input rows and however the rows are
// tiled, so a prompt row gives the same bits in a prefill chunk of any size as in a decode step.
//
// One output y[j, r] = Σ_c w[r, c] · x[j, c]:
//   acc = 0 (16 lanes); for each whole block b of 16 columns, in order: acc = fma(w_b, x_b, acc);
//   s = _mm512_reduce_add_ps(acc) (a fixed shuffle tree); then for the columns past the last
//   block, in order: s = s + w[c] · x[c] (not contracted).
// Tiles of 4 weight rows × 4 input rows keep 16 accumulators in registers (8 loads feed 16 FMAs);
// smaller tiles at the edges run the same per-output sequence.
#if defined(__x86_64__)
#include "CKernels.h"
#include <immintrin.h>

#pragma clang attribute push (__attribute__((target("avx2,fma,avx512f,avx512dq"))), apply_to = function)

#pragma clang fp contract(off)
static inline __attribute__((always_inline)) float f32_tail(const float *w, const float *x, int64_t from, int64_t cols) {
    float s = 0;
    for (int64_t c = from; c < cols; c++) {
        float product = w[c] * x[c];
        s = s + product;
    }
    return s;
}

// y[j * y_stride + i] for weight rows w + i * cols (i < NW) and inputs x + j * cols (j < NX).
static inline __attribute__((always_inline)) void f32_tile(const float *w, const float *x, int64_t cols, float *y,
                                                            int64_t y_stride, const int NW, const int NX) {
    __m512 acc[4][4];
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++) acc[i][j] = _mm512_setzero_ps();
    const int64_t blocks = cols / 16;
    for (int64_t b = 0; b < blocks; b++) {
        __m512 xv[4];
        for (int j = 0; j < NX; j++) xv[j] = _mm512_loadu_ps(x + j * cols + b * 16);
        for (int i = 0; i < NW; i++) {
            const __m512 wv = _mm512_loadu_ps(w + i * cols + b * 16);
            for (int j = 0; j < NX; j++) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++) {
            float s = _mm512_reduce_add_ps(acc[i][j]);
            float t = f32_tail(w + i * cols, x + j * cols, blocks * 16, cols);
            y[j * y_stride + i] = s + t;
        }
}

// Weight rows [r, end) against inputs j..j+NX-1: four rows at a time, then one by one.
static inline __attribute__((always_inline)) void f32_rows_against(const float *w, int64_t r, int64_t end, const float *x,
                                                                    int64_t cols, float *y, int64_t y_stride, const int NX) {
    for (; r + 4 <= end; r += 4) f32_tile(w + r * cols, x, cols, y + r, y_stride, 4, NX);
    for (; r < end; r++) f32_tile(w + r * cols, x, cols, y + r, y_stride, 1, NX);
}

void moe_f32_rows_avx512(const float *w, int64_t rows, int64_t cols, const float *x, int64_t count, float *y,
                         int64_t row_begin, int64_t row_end) {
    (void)rows;
    // A tile of weight rows small enough to stay in L2 while every group of four inputs sweeps it.
    int64_t tile_rows = (96 << 10) / (cols > 0 ? 4 * cols : 1);
    if (tile_rows < 8) tile_rows = 8;
    for (int64_t tile = row_begin; tile < row_end; tile += tile_rows) {
        const int64_t end = tile + tile_rows < row_end ? tile + tile_rows : row_end;
        int64_t j = 0;
        for (; j + 4 <= count; j += 4) f32_rows_against(w, tile, end, x + j * cols, cols, y + j * rows, rows, 4);
        switch (count - j) {
        case 3: f32_rows_against(w, tile, end, x + j * cols, cols, y + j * rows, rows, 3); break;
        case 2: f32_rows_against(w, tile, end, x + j * cols, cols, y + j * rows, rows, 2); break;
        case 1: f32_rows_against(w, tile, end, x + j * cols, cols, y + j * rows, rows, 1); break;
        default: break;
        }
    }
}
#pragma clang attribute pop
#else
#include "CKernels.h"
#include <stdlib.h>
// Not x86-64: moe_kernels_detect() never reports AVX-512, so this is never called.
void moe_f32_rows_avx512(const float *w, int64_t rows, int64_t cols, const float *x, int64_t count, float *y,
                         int64_t row_begin, int64_t row_end) {
    (void)w; (void)rows; (void)cols; (void)x; (void)count; (void)y; (void)row_begin; (void)row_end;
    abort();
}
#endif
