import Dispatch
import Foundation

/// Products with weights kept in ggml blocks (`WeightStorage.ggml`), bit for bit as a GGUF
/// file holds them. Each weight row is decoded once into the calling thread's scratch
/// (`GGMLDequantize.row`, SIMD per block) and dotted with every input row by 16-lane SIMD
/// accumulators, so one read of the quantised row serves up to eight tokens. Each input row's
/// arithmetic is the same whatever the number of rows, so a sequence's outputs do not depend on
/// its batch.
public enum GGMLKernels {
    /// Matrices at least this large are split across two threads (as `BF16Kernels`).
    static let parallelThreshold = 1 << 20

    /// Calls `body` with `x[n, cols]` rounded as llama.cpp rounds the activations of `type`
    /// (`GGMLActivations`), in a temporary buffer.
    public static func withRoundedActivations<R>(_ type: GGMLType, _ x: UnsafePointer<Float>, count n: Int, cols: Int,
                                                 _ body: (UnsafePointer<Float>) throws -> R) rethrows -> R {
        guard GGMLActivations.rounds(type) else { return try body(x) }
        return try withUnsafeTemporaryAllocation(of: Float.self, capacity: max(n * cols, 1)) { buffer in
            for i in 0..<n { GGMLActivations.round(type, x + i * cols, count: cols, into: buffer.baseAddress! + i * cols) }
            return try body(UnsafePointer(buffer.baseAddress!))
        }
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ` for W `[rows, cols]` in `type` blocks at `w`, with the
    /// activations rounded as llama.cpp rounds them.
    public static func multiRow(_ type: GGMLType, _ w: UnsafePointer<UInt8>, rows: Int, cols: Int,
                                x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>) {
        withRoundedActivations(type, x, count: n, cols: cols) { rounded in
            multiRowExact(type, w, rows: rows, cols: cols, x: rounded, count: n, y: y)
        }
        addBlockSumCorrection(type, w, rows: rows, cols: cols, x: x, count: n, y: y)
    }

    /// For Q4_1 and Q5_1 (weights `d·q + m`), moves `y[n, rows]` — computed from activations
    /// rounded by `GGMLActivations` — onto llama.cpp's product. llama.cpp multiplies these types
    /// with Q8_1 activations and adds each block's `m` times Q8_1's block sum `s`, which it
    /// stores as float16(d_unrounded · Σq); the rounded activations give `m · float16(d) · Σq`.
    /// The difference, `m · (s − float16(d)·Σq)` per block, is up to ~2⁻¹¹ of a block sum: it
    /// kept qwen2moe-Q5_1 0.17 nats from llama.cpp through a flipped expert choice. `x` are the
    /// activations as given (not rounded). A no-op for every other type.
    public static func addBlockSumCorrection(_ type: GGMLType, _ w: UnsafePointer<UInt8>, rows: Int, cols: Int,
                                             x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>) {
        guard type == .q4_1 || type == .q5_1 else { return }
        let blocks = cols / 32, blockBytes = type.blockBytes, rowBytes = blocks * blockBytes
        withUnsafeTemporaryAllocation(of: Float.self, capacity: max(blocks, 1)) { correction in
            for i in 0..<n {
                // [blocks] s − float16(d)·Σq of row i's Q8_1 blocks
                for b in 0..<blocks {
                    let (d, sum) = GGMLActivations.q8_1BlockSum(x + i * cols + 32 * b)
                    correction[b] = Float(Float16(d * sum)) - Float(Float16(d)) * sum
                }
                for r in 0..<rows {
                    let row = UnsafeRawPointer(w + r * rowBytes)
                    var total: Float = 0
                    for b in 0..<blocks where correction[b] != 0 {
                        total += GGMLDequantize.half(row, b * blockBytes + 2) * correction[b]
                    }
                    y[i * rows + r] += total
                }
            }
        }
    }

    /// `multiRow` with `x` used as given.
    static func multiRowExact(_ type: GGMLType, _ w: UnsafePointer<UInt8>, rows: Int, cols: Int,
                              x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>) {
        let rowBytes = type.byteCount(elements: cols) ?? 0
        if rows * cols >= parallelThreshold && rows >= 64 {
            let half = rows / 2
            let pointers = UncheckedSendable((w, x, y))
            DispatchQueue.concurrentPerform(iterations: 2) { part in
                let (w, x, y) = pointers.value
                rowRange(type, w, part == 0 ? 0..<half : half..<rows, rows: rows, cols: cols, rowBytes: rowBytes, x: x, count: n, y: y)
            }
        } else {
            rowRange(type, w, 0..<rows, rows: rows, cols: cols, rowBytes: rowBytes, x: x, count: n, y: y)
        }
    }

    static func rowRange(_ type: GGMLType, _ w: UnsafePointer<UInt8>, _ range: Range<Int>, rows: Int, cols: Int, rowBytes: Int,
                         x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>) {
        let scratch = WideningPanel.current // [cols] decoded weights of one row
        precondition(cols <= WideningPanel.floats, "ggml row of \(cols) weights exceeds the scratch panel")
        let chunks = cols / 16
        for r in range {
            GGMLDequantize.row(type, UnsafeRawPointer(w + r * rowBytes), count: cols, into: scratch)
            let wr = UnsafeRawPointer(scratch)
            for i in 0..<n {
                let xr = UnsafeRawPointer(x + i * cols)
                var a0 = SIMD16<Float>(), a1 = SIMD16<Float>()
                var c = 0
                while c + 2 <= chunks {
                    a0.addProduct(wr.loadUnaligned(fromByteOffset: c * 64, as: SIMD16<Float>.self), xr.loadUnaligned(fromByteOffset: c * 64, as: SIMD16<Float>.self))
                    a1.addProduct(wr.loadUnaligned(fromByteOffset: c * 64 + 64, as: SIMD16<Float>.self), xr.loadUnaligned(fromByteOffset: c * 64 + 64, as: SIMD16<Float>.self))
                    c += 2
                }
                if c < chunks {
                    a0.addProduct(wr.loadUnaligned(fromByteOffset: c * 64, as: SIMD16<Float>.self), xr.loadUnaligned(fromByteOffset: c * 64, as: SIMD16<Float>.self))
                }
                var sum = (a0 + a1).sum()
                for t in (chunks * 16)..<cols { sum += scratch[t] * x[i * cols + t] }
                y[i * rows + r] = sum
            }
        }
    }

    /// Decodes rows `first..<first+count` of W into `out[count, cols]` (for panel GEMMs).
    public static func dequantizeRows(_ type: GGMLType, _ w: UnsafePointer<UInt8>, first: Int, count: Int, cols: Int,
                                      into out: UnsafeMutablePointer<Float>) {
        let rowBytes = type.byteCount(elements: cols) ?? 0
        for r in 0..<count {
            GGMLDequantize.row(type, UnsafeRawPointer(w + (first + r) * rowBytes), count: cols, into: out + r * cols)
        }
    }
}
