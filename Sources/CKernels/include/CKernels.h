// Integer-dot kernels for quantised weights, with the instruction set chosen at run time.
//
// C because Swift SIMD cannot name the instructions these need (vpmaddubsw, vpdpbusd); each
// file compiles its functions for one instruction set with target attributes, so the package
// needs no machine-specific -march and one binary runs on every x86-64 machine (and, through
// the portable path, elsewhere).
//
// The arithmetic of one output, identical at every level (so results are bit-identical across
// machines, and alone or batched):
//   activations x[cols] are quantised per block of 32: d = max|x| / 127, q = rint(x · 127/max|x|), then d is
//   rounded to float16 (llama.cpp's Q8_0) when that is a normal float16;
//   for block b: s_b = Σ_i w_i · q_i, exact in int32 (w_i = nibble − 8 for q4, the int8 for i8);
//   acc[b mod 8] = fma((float)s_b, scale_b, acc[b mod 8]) with scale_b = wscale_b · d_b (q4) or d_b (i8);
//   y = ((acc0+acc4)+(acc2+acc6)) + ((acc1+acc5)+(acc3+acc7)), times the row scale for i8.
#ifndef MOE_CKERNELS_H
#define MOE_CKERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Instruction-set levels, lowest first.
enum {
    /// Portable C (any CPU).
    MOE_KERNEL_PORTABLE = 0,
    /// AVX2 + FMA: vpmaddubsw on 256-bit vectors.
    MOE_KERNEL_AVX2 = 1,
    /// AVX-512 F/BW/VL: vpmaddubsw on 512-bit vectors.
    MOE_KERNEL_AVX512 = 2,
    /// AVX-512 VNNI: vpdpbusd (u8 × s8 → s32 in one instruction).
    MOE_KERNEL_AVX512_VNNI = 3,
};

/// Weights per quantisation block (weights and activations alike).
#define MOE_KERNEL_BLOCK 32

/// The highest level this CPU and operating system support (CPUID and XGETBV).
int moe_kernels_detect(void);

/// Whether the CPU has AVX512-BF16 (reported; no kernel uses it yet).
int moe_kernels_has_avx512_bf16(void);

/// Marks the calling thread as one of several already sharing the cores (for example an expert
/// worker): while begins outnumber ends, `moe_kernels_serial()` is nonzero and the callers of
/// the GEMMs run them unsplit rather than spreading each product over the cores again.
void moe_kernels_serial_begin(void);
/// Ends a `moe_kernels_serial_begin`.
void moe_kernels_serial_end(void);
/// Nonzero inside `moe_kernels_serial_begin` / `_end` on this thread.
int moe_kernels_serial(void);

/// A job for `moe_corepair_run`: called with index 0 on the calling thread and 1 on the helper.
typedef void (*moe_corepair_fn)(void *context, int index);

/// Runs `fn(context, 0)` on this thread and `fn(context, 1)` on a helper thread that spins
/// briefly between jobs (see corepair.c), returning when both are done: 1. Returns 0 having run
/// nothing when the helper is unavailable (`MOE_COREPAIR=0`, thread creation failed) or already
/// in use (a nested or concurrent section); the caller then runs its own fallback.
int moe_corepair_run(moe_corepair_fn fn, void *context);
/// Starts the helper now (otherwise the first `moe_corepair_run` does); returns whether it runs.
int moe_corepair_prepare(void);
/// Adds `delta` to the count of expert reads in flight that the helper yields to: while it is
/// above 0 the helper sleeps right after a job instead of spinning (see corepair.c).
void moe_corepair_quiet(int delta);
/// The count `moe_corepair_quiet` keeps (for tests).
int moe_corepair_quiet_count(void);

/// `a[i] = a[i] / (1 + e^(−a[i])) · b[i]` for `i < count` (SwiGLU's silu(gate) · up), with the
/// e^x of `moe_silu_exp` (≤ 2 ulp of `expf` on the clamped range); the same bits at every level.
void moe_silu_mul(int level, float *a, const float *b, int64_t count);
/// The e^x `moe_silu_mul` uses (+∞ above 88, x clamped below at −87), for tests.
float moe_silu_exp(float x);

/// Quantises `x[n, cols]` (cols a multiple of 32) to int8 blocks: `q[n, cols]`,
/// `d[n, cols/32]` (block scales) and `sums[n, cols/32]` (Σ q of each block). The same bytes at
/// every level: d = max|x| / 127, q = x · (127/max|x|) rounded half to even, then d rounded to the
/// nearest float16 when that is a normal float16 (2^-14 ≤ d < 65520), as llama.cpp's Q8_0 stores it.
void moe_quantize_q8(int level, const float *x, int64_t n, int64_t cols, int8_t *q, float *d, int32_t *sums);

/// `y[t * ldy + r] = W[r] · x[t]` for rows `row_begin..<row_end` and tokens `t < n`, W in q4
/// blocks (`blocks[rows, cols/32, 16]`, byte j: element j low nibble, j+16 high nibble;
/// `scales[rows, cols/32]`), x quantised by `moe_quantize_q8`.
void moe_gemm_q4_q8(int level, const uint8_t *blocks, const float *scales, int64_t cols,
                    int64_t row_begin, int64_t row_end,
                    const int8_t *q, const float *d, const int32_t *sums, int64_t n,
                    float *y, int64_t ldy);

/// The same for q4 blocks with float16 block scales (`scales[rows, cols/32]`, IEEE binary16 bits):
/// GGUF Q4_0's own scales, so a block costs 18 bytes as in the file, not 20. The scales widen
/// exactly, so the bits are those of `moe_gemm_q4_q8` on the same scales in float32.
void moe_gemm_q4h_q8(int level, const uint8_t *blocks, const uint16_t *scales, int64_t cols,
                     int64_t row_begin, int64_t row_end,
                     const int8_t *q, const float *d, const int32_t *sums, int64_t n,
                     float *y, int64_t ldy);

/// The same for int8 weights `w[rows, cols]` with one scale per row, `row_scales[rows]`.
void moe_gemm_i8_q8(int level, const int8_t *w, const float *row_scales, int64_t cols,
                    int64_t row_begin, int64_t row_end,
                    const int8_t *q, const float *d, const int32_t *sums, int64_t n,
                    float *y, int64_t ldy);

/// `y[t * ldy + r] = W[r] · x[t]` for rows `row_begin..<row_end`, W in GGUF Q8_0 blocks as the file
/// stores them (`block_q8_0`: float16 d, 32 int8; `blocks[rows, cols/32, 34]`), x quantised by
/// `moe_quantize_q8`: ggml's steps (lane k = Σ_b fma(d_w · d_x, Σ of the block's products 4k..4k+3),
/// ggml's final sum), so llama.cpp's bits; the same at every level and any `n` (q8_0.c).
void moe_gemm_q8_0_q8(int level, const uint8_t *blocks, int64_t cols, int64_t row_begin, int64_t row_end,
                      const int8_t *q, const float *d, int64_t n, float *y, int64_t ldy);

/// `out[count]` = `x[count]` rounded to float16 bits (round to nearest even), as ggml's CPU backend
/// rounds the activations of an F16 matrix product (f16.c).
void moe_round_f16(int level, const float *x, int64_t count, uint16_t *out);

/// `y[t * ldy + r] = W[r] · x[t]` for rows `row_begin..<row_end`, W `[rows, cols]` and x `[n, cols]`
/// float16 bits: with `order` 0 ggml's `ggml_vec_dot_f16` steps (x86 without AVX512-FP16), so
/// llama.cpp's bits for one token; with `order` 1 llamafile's tinyBLAS steps (llama.cpp's for two
/// tokens or more); the same at every level and any `n` (f16.c).
void moe_gemm_f16_f16(int level, int order, const uint16_t *w, int64_t cols, int64_t row_begin, int64_t row_end,
                      const uint16_t *x, int64_t n, float *y, int64_t ldy);

/// Quantises `x[n, cols]` (cols a multiple of 256) to Q8_K as llama.cpp does (its
/// quantize_row_q8_K): per block of 256, iscale = −127 / (the value of largest magnitude),
/// q = min(127, rint(iscale · x)), d = 1 / iscale; `q[n, cols]`, `d[n, cols/256]` and the sums of
/// each 16 values `bsums[n, cols/16]`.
void moe_quantize_q8_K(const float *x, int64_t n, int64_t cols, int8_t *q, float *d, int32_t *bsums);

/// `y[t * ldy + r] = W[r] · x[t]` for rows `row_begin..<row_end`, W in GGUF K-quant blocks of
/// ggml type `type` (10 Q2_K, 12 Q4_K, 13 Q5_K, 14 Q6_K; `cols/256` blocks a row, as the file stores
/// them), x quantised by `moe_quantize_q8_K`. Returns 0 (nothing written) for any other type.
/// Per super-block b: acc = fma(d_b·d8_b, Σ scale·Σ q·q8, acc), then for Q4_K/Q5_K
/// acc = fma(−dmin_b·d8_b, Σ min·Σ q8, acc); the integer sums exact, so every level agrees.
/// Q6_K instead keeps ggml's eight lanes (lane m = fma(d_b·d8_b, its int32 lane, lane m), then
/// ggml's final sum): llama.cpp's bits.
int moe_gemm_kquant_q8_K(int level, int type, const uint8_t *w, int64_t cols, int64_t row_begin, int64_t row_end,
                         const int8_t *q, const float *d, const int32_t *bsums, int64_t n, float *y, int64_t ldy);

/// Q8_1's block sums of `x[n, cols]` already quantised by `moe_quantize_q8` (its `sums`): per block
/// of 32, s = float16(amax/127 · Σq) with the unrounded scale, as llama.cpp stores them
/// (`s[n, cols/32]`, the float16 value as float). Q4_1 and Q5_1 multiply each block's offset by it.
void moe_q8_1_block_sums(const float *x, int64_t n, int64_t cols, const int32_t *sums, float *s);

/// `y[t * ldy + r] = W[r] · x[t]` for rows `row_begin..<row_end`, W in GGUF 32-weight blocks of
/// ggml type `type` (3 Q4_1, 6 Q5_0, 7 Q5_1, 20 IQ4_NL; as the file stores them), x quantised by
/// `moe_quantize_q8` (`q`, float16-valued `d`, `sums` = Σq) plus, for Q4_1/Q5_1, `s` from
/// `moe_q8_1_block_sums` (unused otherwise). Per block b: acc[b mod 8] = fma(Σ value·q8, d_w·d_x,
/// acc[b mod 8]), then for Q4_1/Q5_1 acc[b mod 8] = fma(m_w, s, acc[b mod 8]); the canonical final
/// sum. The same bits at every level and any `n`. Returns 0 (nothing written) for any other type.
int moe_gemm_ggml32_q8(int level, int type, const uint8_t *w, int64_t cols, int64_t row_begin, int64_t row_end,
                       const int8_t *q, const float *d, const int32_t *sums, const float *s, int64_t n, float *y, int64_t ldy);

/// `moe_gemm_kquant_q8_K` for the other two super-block types (11 Q3_K, 23 IQ4_XS), x quantised by
/// `moe_quantize_q8_K`: acc = fma(d_b·d8_b, Σ scale·Σ value·q8, acc) per super-block. Returns 0
/// (nothing written) for any other type.
int moe_gemm_ggml_k_q8_K(int level, int type, const uint8_t *w, int64_t cols, int64_t row_begin, int64_t row_end,
                         const int8_t *q, const float *d, const int32_t *bsums, int64_t n, float *y, int64_t ldy);

/// `y[i * ldy + r] = Σ_c W[r, c] · x[i * cols + c]` for rows `row_begin..<row_end` of an MXFP4
/// matrix (llama.cpp's `block_mxfp4`: 17 bytes per 32 weights) and `n` float input rows; the
/// float arithmetic is fixed per output (see mxfp4.c), the same at every level and any `n`.
void moe_gemv_mxfp4(int level, const uint8_t *blocks, int64_t cols, int64_t row_begin, int64_t row_end,
                    const float *x, int64_t n, float *y, int64_t ldy);

/// The integer-dot MXFP4 product: `y[t * ldy + r] = W[r] · x[t]` for rows `row_begin..<row_end`,
/// W in `block_mxfp4` blocks (`blocks[rows, cols/32, 17]`), x quantised by `moe_quantize_q8`. Per
/// block b: s_b = Σ v_i · q_i exact in int32 with v the doubled e2m1 values (llama.cpp's
/// `kvalues_mxfp4`: 0, ±1, ±2, ±3, ±4, ±6, ±8, ±12); acc[b mod 8] = fma((float)s_b, 2^(e_b−128) · d_b,
/// acc[b mod 8]); the canonical final sum. The same bits at every level and any `n`.
void moe_gemm_mxfp4_q8(int level, const uint8_t *blocks, int64_t cols, int64_t row_begin, int64_t row_end,
                       const int8_t *q, const float *d, const int32_t *sums, int64_t n, float *y, int64_t ldy);

/// `moe_gemm_mxfp4_q8` by the block-group kernel of `level` ("rows" in `moe_mxfp4_kernel_name`)
/// whatever the CPU and `MOE_MXFP4_KERNEL`: tests compare it with the default variant.
void moe_gemm_mxfp4_q8_rows(int level, const uint8_t *blocks, int64_t cols, int64_t row_begin, int64_t row_end,
                            const int8_t *q, const float *d, const int32_t *sums, int64_t n, float *y, int64_t ldy);

/// The variant `moe_gemm_mxfp4_q8` runs at `level` on this CPU: "nibbles" (AVX-512 VBMI + VNNI,
/// see mxfp4_avx512.c), "rows" (the earlier block-group kernel of each level; also chosen by
/// `MOE_MXFP4_KERNEL=rows`, for side-by-side timing) or "portable". Every variant gives the same bits.
const char *moe_mxfp4_kernel_name(int level);

/// Row-invariant f32 product on AVX-512 F (call only when moe_kernels_detect() >= MOE_KERNEL_AVX512):
/// y[j * rows + r] = Σ_c w[r * cols + c] · x[j * cols + c] for r in [row_begin, row_end), j < count, each
/// output with one fixed arithmetic whatever `count` and the row range (see f32_rows_avx512.c).
void moe_f32_rows_avx512(const float *w, int64_t rows, int64_t cols, const float *x, int64_t count, float *y,
                         int64_t row_begin, int64_t row_end);

/// Row-invariant bf16 product on AVX-512 F (call only when moe_kernels_detect() >= MOE_KERNEL_AVX512):
/// y[j * rows + r] = Σ_c bf16(w[r * cols + c]) · x[j * cols + c] for r in [row_begin, row_end), j < count, each
/// output with exactly the arithmetic of the Swift bf16 GEMV (`BF16Kernels.gemv`; see bf16_rows_avx512.c).
/// `px` holds each input row permuted as `BF16Kernels.permute` does (row j at px + j * stride, stride =
/// 16 · (cols / 16)); `x` the same rows as they are (for the columns past the last block of 16).
void moe_bf16_rows_avx512(const uint16_t *w, int64_t rows, int64_t cols, const float *px, int64_t stride, const float *x,
                          int64_t count, float *y, int64_t row_begin, int64_t row_end);

/// CRC-32C (Castagnoli) of `length` bytes at `data`, continuing from `crc` (0 to start), as
/// zlib's `crc32` continues: hardware `crc32` in three streams where the CPU has SSE4.2.
uint32_t moe_crc32c(uint32_t crc, const void *data, size_t length);
/// The same from a byte table alone (tests compare the two).
uint32_t moe_crc32c_portable(uint32_t crc, const void *data, size_t length);

#ifdef __cplusplus
}
#endif

#endif
