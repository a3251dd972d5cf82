import Foundation
import Testing
@testable import TensorMath

/// The K-quant integer-dot kernels (`moe_gemm_kquant_q8_K`, issue 22): against the dequantised
/// product with llama.cpp's Q8_K rounding of the activations (`GGMLDequantize`,
/// `GGMLActivations`), bit for bit across instruction-set levels, and per token whatever the batch.
@Suite struct KQuantKernelTests {
    /// `rows` rows of `cols / 256` random super-blocks of `type`: random quant bytes and scales,
    /// the float16 super-block scales drawn small and positive (dmin too) as quantisers write them.
    static func randomBlocks(_ type: GGMLType, rows: Int, cols: Int, seed: UInt64) -> [UInt8] {
        var state = seed
        func next() -> UInt64 { state = state &* 6364136223846793005 &+ 1442695040888963407; return state >> 33 }
        let count = rows * (type.byteCount(elements: cols) ?? 0)
        var bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) }
        func setHalf(_ at: Int) {
            let value = Float16(Float(next() % 1000 + 1) * 1e-5)
            bytes[at] = UInt8(value.bitPattern & 0xFF)
            bytes[at + 1] = UInt8(value.bitPattern >> 8)
        }
        for b in stride(from: 0, to: count, by: type.blockBytes) {
            if type == .q6_K { setHalf(b + 208) } else if type == .q2_K { setHalf(b + 80); setHalf(b + 82) } else { setHalf(b); setHalf(b + 2) }
        }
        return bytes
    }

    static func product(_ type: GGMLType, _ blocks: [UInt8], rows: Int, cols: Int, x: [Float], count n: Int, level: KernelLevel) -> [Float] {
        var y = [Float](repeating: .nan, count: n * rows)
        blocks.withUnsafeBufferPointer { w in
            x.withUnsafeBufferPointer { xs in
                y.withUnsafeMutableBufferPointer { ys in
                    IntegerDotKernels.kQuant(level: level, type: type, w.baseAddress!, rows: rows, cols: cols, x: xs.baseAddress!, count: n, y: ys.baseAddress!)
                }
            }
        }
        return y
    }

    @Test(arguments: [GGMLType.q2_K, .q4_K, .q5_K, .q6_K])
    func kernelsAreTheDequantisedProductAtEveryLevel(type: GGMLType) {
        let rows = 70, cols = 768, n = 3
        let blocks = Self.randomBlocks(type, rows: rows, cols: cols, seed: UInt64(type.rawValue))
        let x = QuantizationTests.random(n * cols, seed: 5).map { $0 * 30 }
        let reference = Self.product(type, blocks, rows: rows, cols: cols, x: x, count: n, level: .portable)
        // The dequantised weights and llama.cpp's Q8_K rounding of x, multiplied in double.
        var rounded = [Float](repeating: 0, count: n * cols), w = [Float](repeating: 0, count: cols)
        let rowBytes = type.byteCount(elements: cols)!
        x.withUnsafeBufferPointer { xs in
            rounded.withUnsafeMutableBufferPointer { out in
                for t in 0..<n { GGMLActivations.round(type, xs.baseAddress! + t * cols, count: cols, into: out.baseAddress! + t * cols) }
            }
        }
        for r in 0..<rows {
            blocks.withUnsafeBytes { GGMLDequantize.row(type, $0.baseAddress! + r * rowBytes, count: cols, into: &w) }
            for t in 0..<n {
                var exact = 0.0, magnitude = 0.0
                for c in 0..<cols {
                    exact += Double(w[c]) * Double(rounded[t * cols + c])
                    magnitude += abs(Double(w[c]) * Double(rounded[t * cols + c]))
                }
                #expect(abs(Double(reference[t * rows + r]) - exact) <= 1e-6 * magnitude + 1e-9, "\(type) row \(r) token \(t)")
            }
        }
        for level in KernelLevel.available where level != .portable {
            let y = Self.product(type, blocks, rows: rows, cols: cols, x: x, count: n, level: level)
            #expect(y.map(\.bitPattern) == reference.map(\.bitPattern), "\(type) at \(level.name)")
        }
    }

    /// Through `WeightMatrix.apply`: each token alone gives the bits it gives in a batch, split over threads or not.
    @Test func weightMatrixUsesTheKernelsAndBatchesAreBitIdentical() {
        guard IntegerDotKernels.level != nil else { return }
        let rows = 512, cols = 2048, n = 5
        for type in [GGMLType.q4_K, .q6_K] {
            let blocks = Self.randomBlocks(type, rows: rows, cols: cols, seed: 9)
            let x = QuantizationTests.random(n * cols, seed: 10)
            var alone = [Float](repeating: 0, count: n * rows), batched = alone
            blocks.withUnsafeBufferPointer { w in
                let matrix = WeightMatrix(rows: rows, cols: cols, storage: .ggml(type: type, blocks: w.baseAddress!), owner: nil)
                x.withUnsafeBufferPointer { xs in
                    alone.withUnsafeMutableBufferPointer { y in
                        for t in 0..<n { matrix.apply(xs.baseAddress! + t * cols, rowCount: 1, into: y.baseAddress! + t * rows) }
                    }
                    batched.withUnsafeMutableBufferPointer { matrix.apply(xs.baseAddress!, rowCount: n, into: $0.baseAddress!) }
                }
            }
            #expect(batched.map(\.bitPattern) == alone.map(\.bitPattern), "\(type)")
            #expect(Self.product(type, blocks, rows: rows, cols: cols, x: x, count: n, level: .portable).map(\.bitPattern) == batched.map(\.bitPattern))
        }
    }

    /// A decode GEMV large enough to split in two (the demo's Q6_K LM head class: 1M+ multiply-adds)
    /// runs its halves on the core pair (`kQuantOnCorePair`); the split must give the unsplit bits.
    @Test(arguments: [GGMLType.q4_K, .q6_K])
    func decodeSplitOnTheCorePairIsBitIdenticalToUnsplit(type: GGMLType) {
        guard let level = IntegerDotKernels.level else { return }
        let rows = 1040, cols = 1024 // 1040 rows: the second half is shorter than the first
        #expect(IntegerDotKernels.rowSpans(rows: rows, cols: cols, count: 1).count == min(2, ProcessInfo.processInfo.activeProcessorCount))
        let blocks = Self.randomBlocks(type, rows: rows, cols: cols, seed: 21)
        let x = QuantizationTests.random(cols, seed: 22)
        let split = Self.product(type, blocks, rows: rows, cols: cols, x: x, count: 1, level: level)
        let unsplit = IntegerDotKernels.serially { Self.product(type, blocks, rows: rows, cols: cols, x: x, count: 1, level: level) }
        #expect(!split.contains { $0.isNaN })
        #expect(split.map(\.bitPattern) == unsplit.map(\.bitPattern), "\(type)")
    }
}
