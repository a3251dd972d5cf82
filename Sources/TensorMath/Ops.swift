import COpenBLAS
import Foundation
import CKernels

/// Elementwise and reduction kernels of a transformer layer, over float32 rows.
public enum Ops {
    /// RMSNorm over each of `rowCount` rows of width `dim`, in place:
    /// `x ← x / sqrt(mean(x²) + eps) · weight`.
    public static func rmsNorm(_ x: UnsafeMutablePointer<Float>, rowCount: Int, dim: Int, weight: UnsafePointer<Float>, eps: Float) {
        for r in 0..<rowCount {
            let row = x + r * dim
            // Squares summed in double, in order, as llama.cpp's ggml_rms_norm does: a float sum
            // rounds the scale differently in its last bit now and then, which moves float16-cached
            // keys of q/k-normalised models (OLMoE, Qwen3) off llama.cpp's.
            var sumSquares: Double = 0
            for i in 0..<dim { sumSquares += Double(row[i] * row[i]) }
            let scale = 1 / (Float(sumSquares / Double(dim)) + eps).squareRoot()
            for i in 0..<dim { row[i] = weight[i] * (row[i] * scale) }
        }
    }

    /// Numerically stable softmax over `count` values, in place.
    public static func softmax(_ x: UnsafeMutablePointer<Float>, count: Int) {
        guard count > 0 else { return }
        var maximum = -Float.infinity
        for i in 0..<count { maximum = max(maximum, x[i]) }
        var total: Float = 0
        for i in 0..<count { let e = expf(x[i] - maximum); x[i] = e; total += e }
        let inverse = 1 / total
        for i in 0..<count { x[i] *= inverse }
    }

    /// `silu(a) · b`, elementwise, into `a`: the gated activation of a SwiGLU MLP.
    public static func siluMultiply(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, count: Int) {
        // Eight at a time with a polynomial e^x where the CPU has AVX2 (the scalar expf was 8% of
        // decode CPU at 32 sequences); the same bits on every CPU (CKernels/silu.c).
        // `MOE_SILU=expf` keeps the scalar expf loop, for comparison.
        if scalarSilu {
            for i in 0..<count {
                let v = a[i]
                a[i] = v / (1 + expf(-v)) * b[i]
            }
            return
        }
        moe_silu_mul((IntegerDotKernels.level ?? .portable).rawValue, a, b, Int64(count))
    }

    private static let scalarSilu = ProcessInfo.processInfo.environment["MOE_SILU"] == "expf"

    /// The logistic sigmoid.
    @inline(__always)
    public static func sigmoid(_ v: Float) -> Float { 1 / (1 + expf(-v)) }

    /// Indices of the `k` largest values, largest first; ties go to the lower index, as
    /// `torch.topk` does on CPU for distinct values.
    public static func topK(_ values: UnsafePointer<Float>, count: Int, k: Int) -> [Int] {
        var chosen: [Int] = []
        topK(values, count: count, k: k, into: &chosen)
        return chosen
    }

    /// As `topK(_:count:k:)`, written into `chosen` (emptied first): a list that already has room
    /// for `k + 1` indices is reused without allocating (the MoE block's per-step routing).
    public static func topK(_ values: UnsafePointer<Float>, count: Int, k: Int, into chosen: inout [Int]) {
        precondition(k <= count)
        chosen.removeAll(keepingCapacity: true)
        // k + 1: an insertion into a full list goes to k + 1 before the last is dropped, and
        // must not reallocate (a decode step's allocations would depend on the scores).
        chosen.reserveCapacity(k + 1)
        for i in 0..<count {
            // Insertion into a short sorted list: k is at most a few dozen.
            var position = chosen.count
            while position > 0 && values[chosen[position - 1]] < values[i] { position -= 1 }
            if position < k {
                chosen.insert(i, at: position)
                if chosen.count > k { chosen.removeLast() }
            }
        }
    }

    /// `y += alpha · x` over `count` values.
    @inline(__always)
    public static func addScaled(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, alpha: Float, count: Int) {
        cblas_saxpy(Int32(count), alpha, x, 1, y, 1)
    }

    /// Index of the largest value (first on ties).
    public static func argmax(_ x: UnsafePointer<Float>, count: Int) -> Int {
        var best = 0
        for i in 1..<max(count, 1) where x[i] > x[best] { best = i }
        return best
    }
}
