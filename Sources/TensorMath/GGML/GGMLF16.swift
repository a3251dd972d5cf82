import CKernels
import Dispatch
import Foundation

/// GGUF F16 matrices (`WeightStorage.ggml(.f16, …)`: what `llama-quantize` leaves of a matrix whose
/// rows are not whole blocks) multiplied as llama.cpp's CPU backend multiplies them: the weights kept
/// as the file's float16 (half the bytes of widening them), the activations rounded to float16, and
/// each output summed in ggml's `ggml_vec_dot_f16` order (`CKernels/f16.c`). The arithmetic of an
/// output does not depend on the number of rows or the split over threads.
public enum GGMLF16 {
    /// Whether GGUF F16 matrices stay float16 on this path (the default); `MOE_GGUF_F16=float`
    /// widens them to float32 when the model loads and multiplies them with float32 activations,
    /// as before (for side-by-side measurements).
    public static let keepsHalves = ProcessInfo.processInfo.environment["MOE_GGUF_F16"] != "float"

    /// The summation order: ggml's `ggml_vec_dot_f16` (0, the default: what llama.cpp computes for one
    /// token, and for any number when the row count is not a multiple of 4), or llamafile's tinyBLAS
    /// (1, `MOE_GGUF_F16=tinyblas`: what llama.cpp computes for two tokens or more otherwise; for
    /// measurements). One order for every batch, so that a sequence's outputs do not depend on it.
    public static let order: Int32 = ProcessInfo.processInfo.environment["MOE_GGUF_F16"] == "tinyblas" ? 1 : 0

    /// `y[n, rows] = x[n, cols] · Wᵀ` for W `[rows, cols]` in float16 bits at `level`.
    public static func product(level: KernelLevel, _ w: UnsafePointer<UInt16>, rows: Int, cols: Int,
                               x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>) {
        guard n > 0, rows > 0 else { return }
        guard cols > 0 else {
            for r in 0..<n { (y + r * rows).update(repeating: 0, count: rows) }
            return
        }
        // xh[n, cols] the activations as float16 bits; on the stack for decode-sized products.
        withUnsafeTemporaryAllocation(of: UInt16.self, capacity: n * cols) { buffer in
            let xh = buffer.baseAddress!
            moe_round_f16(level.rawValue, x, Int64(n * cols), xh)
            let pointers = UncheckedSendable((w, UnsafePointer(xh), y))
            let (span, count) = IntegerDotKernels.rowSpans(rows: rows, cols: cols, count: n)
            if count > 1 {
                DispatchQueue.concurrentPerform(iterations: count) { index in
                    runRows(pointers.value, level: level, cols: cols, rows: rows, n: n, first: index * span, last: min(rows, (index + 1) * span))
                }
            } else {
                runRows(pointers.value, level: level, cols: cols, rows: rows, n: n, first: 0, last: rows)
            }
        }
    }

    /// Rows `first..<last` of one product (`product`'s operands): any split gives the same bits.
    private static func runRows(_ p: (UnsafePointer<UInt16>, UnsafePointer<UInt16>, UnsafeMutablePointer<Float>),
                                level: KernelLevel, cols: Int, rows: Int, n: Int, first: Int, last: Int) {
        let (w, xh, y) = p
        moe_gemm_f16_f16(level.rawValue, order, w, Int64(cols), Int64(first), Int64(last), xh, Int64(n), y, Int64(rows))
    }
}
