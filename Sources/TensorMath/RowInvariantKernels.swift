import CKernels
import Dispatch
import Foundation

/// Products over many input rows (prefill chunks) in which every output is computed with exactly
/// the arithmetic of the single-row GEMV, so a row's result does not depend on how many rows
/// share the product: a prompt row gives the same bits in a chunk of 300, in a chunk of 7, as a
/// decode step's one row, and beside any other sequence's rows. The prompt cache relies on it:
/// a cached prefix (prompt and reply) followed by the rest of a prompt gives the bits of the
/// whole prompt run cold (`Engine`'s partial prompt-cache hits).
///
/// OpenBLAS's sgemm, which these replace above 8 rows, blocks the inner dimension and
/// accumulates in an order of its own, so its rows differ from the GEMV's in the last bits.
/// Here the inner dimension is never split: each output keeps the GEMV's lane accumulators
/// over the whole row, in the same order, and the product is blocked only over output
/// features (a tile of weight rows stays in L2 while every group of input rows sweeps it)
/// and over input rows (two weight rows against two input rows at a time).
public enum RowInvariantKernels {
    /// Whether bf16 products above 8 rows use these kernels (the default). `MOE_PREFILL_GEMM=sgemm`
    /// restores widened panels + sgemm: faster prefill on large matrices (measured in docs/HTTP.md,
    /// "Prompt caching"), but then the engine's probe finds prefill inexact and partial
    /// prompt-cache hits are off.
    public static let enabled = ProcessInfo.processInfo.environment["MOE_PREFILL_GEMM"] != "sgemm"

    /// Whether products run the AVX-512 tile kernel (`moe_bf16_rows_avx512`, the same bits as the Swift
    /// kernels below): as `F32RowInvariantKernels.useAVX512`, fixed for the process.
    /// `MOE_BF16_ROWS=swift` keeps the Swift kernels (for side-by-side timing).
    static let useAVX512 = F32RowInvariantKernels.useAVX512 && ProcessInfo.processInfo.environment["MOE_BF16_ROWS"] != "swift"

    /// Weight bytes of one tile: swept once per group of four input rows, so it should stay in L2.
    static let tileBytes = 96 << 10

    /// `y[j, rows] = W[rows, cols] · x[j, cols]` for `j < count`, W in bf16; per output the
    /// arithmetic of `BF16Kernels.gemv`. Large products are split over two threads by weight rows.
    public static func bf16(_ w: UnsafePointer<UInt16>, rows: Int, cols: Int, x: UnsafePointer<Float>, count: Int,
                            y: UnsafeMutablePointer<Float>) {
        let blocks = cols / 16
        let stride = blocks * 16 // permuted floats per input row
        guard stride > 0 else {
            MultiRowKernels.bf16(w, rows: rows, cols: cols, x: x, count: count, y: y)
            return
        }
        // The permuted input rows live in this thread's widening panel (2 MiB), as many as fit.
        let panel = WideningPanel.current
        let batch = max(4, (WideningPanel.floats / stride) & ~3)
        let tileRows = max(8, tileBytes / (2 * cols))
        var first = 0
        while first < count {
            let n = min(batch, count - first)
            let xb = x + first * cols, yb = y + first * rows
            // More inputs than a panel holds (wide rows): a buffer of their own.
            let own = n * stride > WideningPanel.floats ? AlignedBuffer<Float>(count: n * stride) : nil
            let permuted = own?.pointer ?? panel
            for j in 0..<n { BF16Kernels.permute(xb + j * cols, blocks: blocks, into: permuted + j * stride) }
            let px = UnsafePointer(permuted)
            func run(_ range: Range<Int>) {
                if useAVX512 {
                    // 4x6 register tiles of 16-lane [even | odd] accumulators (bf16_rows_avx512.c):
                    // the same per-output arithmetic, 24 FMAs per 4 widened weight blocks.
                    moe_bf16_rows_avx512(w, Int64(rows), Int64(cols), px, Int64(stride), xb, Int64(n), yb,
                                         Int64(range.lowerBound), Int64(range.upperBound))
                    return
                }
                var tile = range.lowerBound
                while tile < range.upperBound {
                    let tileRange = tile..<min(tile + tileRows, range.upperBound)
                    var g = 0
                    while g + 2 <= n {
                        twoByTwo(w, tileRange, cols: cols, blocks: blocks, permutedX: px + g * stride, stride: stride,
                                 x: xb + g * cols, y: yb + g * rows, yStride: rows)
                        g += 2
                    }
                    if g < n {
                        BF16Kernels.rowRange(w, tileRange, cols: cols, blocks: blocks, permutedX: px + g * stride, x: xb + g * cols, y: yb + g * rows)
                    }
                    tile = tileRange.upperBound
                }
            }
            if rows >= 64 && n * rows * cols >= WeightMatrix.parallelGEMMWork && moe_kernels_serial() == 0 {
                // Disjoint output features per thread; each output's arithmetic is unchanged.
                let half = (rows / 2 + 7) & ~7
                let step = UncheckedSendable(run)
                DispatchQueue.concurrentPerform(iterations: 2) { part in step.value(part == 0 ? 0..<half : half..<rows) }
            } else {
                run(0..<rows)
            }
            withExtendedLifetime(own) {}
            first += n
        }
    }

    /// Two weight rows against two input rows per pass (eight accumulators: six loads feed eight
    /// FMAs, where one weight row against four input rows needs nine); per output the arithmetic
    /// of `BF16Kernels.rowRange`: even and odd lane accumulators over the blocks in order, then
    /// `(even + odd).sum()` plus the scalar tail.
    @inline(__always)
    static func twoByTwo(_ w: UnsafePointer<UInt16>, _ range: Range<Int>, cols: Int, blocks: Int, permutedX px: UnsafePointer<Float>,
                         stride: Int, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, yStride: Int) {
        let p0 = UnsafeRawPointer(px), p1 = UnsafeRawPointer(px + stride)
        let from = blocks * 16
        var r = range.lowerBound
        while r + 2 <= range.upperBound {
            let row0 = UnsafeRawPointer(w + r * cols), row1 = UnsafeRawPointer(w + (r + 1) * cols)
            var e00 = SIMD8<Float>(), o00 = SIMD8<Float>(), e10 = SIMD8<Float>(), o10 = SIMD8<Float>()
            var e01 = SIMD8<Float>(), o01 = SIMD8<Float>(), e11 = SIMD8<Float>(), o11 = SIMD8<Float>()
            for b in 0..<blocks {
                let lanes0 = row0.loadUnaligned(fromByteOffset: b * 32, as: SIMD8<UInt32>.self)
                let lanes1 = row1.loadUnaligned(fromByteOffset: b * 32, as: SIMD8<UInt32>.self)
                let we0 = BF16Kernels.widenEven(lanes0), wo0 = BF16Kernels.widenOdd(lanes0)
                let we1 = BF16Kernels.widenEven(lanes1), wo1 = BF16Kernels.widenOdd(lanes1)
                let offset = b * 64
                let xe0 = p0.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self)
                let xo0 = p0.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self)
                e00.addProduct(we0, xe0); o00.addProduct(wo0, xo0)
                e10.addProduct(we1, xe0); o10.addProduct(wo1, xo0)
                let xe1 = p1.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self)
                let xo1 = p1.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self)
                e01.addProduct(we0, xe1); o01.addProduct(wo0, xo1)
                e11.addProduct(we1, xe1); o11.addProduct(wo1, xo1)
            }
            let w0 = w + r * cols, w1 = w + (r + 1) * cols
            y[r] = (e00 + o00).sum() + BF16Kernels.tail(w0, cols: cols, from: from, x: x)
            y[r + 1] = (e10 + o10).sum() + BF16Kernels.tail(w1, cols: cols, from: from, x: x)
            y[yStride + r] = (e01 + o01).sum() + BF16Kernels.tail(w0, cols: cols, from: from, x: x + cols)
            y[yStride + r + 1] = (e11 + o11).sum() + BF16Kernels.tail(w1, cols: cols, from: from, x: x + cols)
            r += 2
        }
        if r < range.upperBound {
            MultiRowKernels.bf16Rows(TwoRows.self, w, r..<range.upperBound, cols: cols, blocks: blocks, permutedX: px, x: x, y: y, yStride: yStride)
        }
    }
}
