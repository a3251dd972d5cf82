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
/// and over input rows (groups of four share each weight load, as `MultiRowKernels` do).
public enum RowInvariantKernels {
    /// Whether bf16 products above 8 rows use these kernels (the default). `MOE_PREFILL_GEMM=sgemm`
    /// restores widened panels + sgemm: faster prefill on large matrices (measured in docs/HTTP.md,
    /// "Prompt caching"), but then the engine's probe finds prefill inexact and partial
    /// prompt-cache hits are off.
    public static let enabled = ProcessInfo.processInfo.environment["MOE_PREFILL_GEMM"] != "sgemm"

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
                var tile = range.lowerBound
                while tile < range.upperBound {
                    let tileRange = tile..<min(tile + tileRows, range.upperBound)
                    var g = 0
                    while g < n {
                        let group = min(4, n - g)
                        let pg = px + g * stride, xg = xb + g * cols, yg = yb + g * rows
                        switch group {
                        case 4: MultiRowKernels.bf16Rows(FourRows.self, w, tileRange, cols: cols, blocks: blocks, permutedX: pg, x: xg, y: yg, yStride: rows)
                        case 3: MultiRowKernels.bf16Rows(ThreeRows.self, w, tileRange, cols: cols, blocks: blocks, permutedX: pg, x: xg, y: yg, yStride: rows)
                        case 2: MultiRowKernels.bf16Rows(TwoRows.self, w, tileRange, cols: cols, blocks: blocks, permutedX: pg, x: xg, y: yg, yStride: rows)
                        default: BF16Kernels.rowRange(w, tileRange, cols: cols, blocks: blocks, permutedX: pg, x: xg, y: yg)
                        }
                        g += group
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
}
