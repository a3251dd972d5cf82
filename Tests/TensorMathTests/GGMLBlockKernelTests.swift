import Foundation
import Testing
import TensorMath

/// The integer-dot kernels of the ggml block types that had only the float path (issue 21 item 2:
/// Q4_1, Q5_0, Q5_1, IQ4_NL against Q8_0/Q8_1 activations, Q3_K and IQ4_XS against Q8_K): against
/// the dequantised product with llama.cpp's rounding of the activations, bit for bit across
/// instruction-set levels, and per token whatever the batch.
@Suite struct GGMLBlockKernelTests {
    static let types: [GGMLType] = [.q4_1, .q5_0, .q5_1, .iq4_NL, .q3_K, .iq4_XS]

    /// `rows` rows of random blocks of `type`: random code bytes, float16 scales small and positive
    /// as quantisers write them (Q4_1/Q5_1's offsets small and of either sign).
    static func randomBlocks(_ type: GGMLType, rows: Int, cols: Int, seed: UInt64) -> [UInt8] {
        var state = seed &+ 17
        func next() -> UInt64 { state = state &* 6364136223846793005 &+ 1442695040888963407; return state >> 33 }
        let count = rows * (type.byteCount(elements: cols) ?? 0)
        var bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) }
        func setHalf(_ at: Int, signed: Bool = false) {
            var value = Float(next() % 1000 + 1) * 1e-5
            if signed && next() % 2 == 0 { value = -value }
            let half = Float16(value)
            bytes[at] = UInt8(half.bitPattern & 0xFF)
            bytes[at + 1] = UInt8(half.bitPattern >> 8)
        }
        for b in stride(from: 0, to: count, by: type.blockBytes) {
            if type == .q3_K {
                setHalf(b + 108)
            } else {
                setHalf(b)
                if type == .q4_1 || type == .q5_1 { setHalf(b + 2, signed: true) }
            }
        }
        return bytes
    }

    /// The product through the type's kernel at `level`.
    static func product(_ type: GGMLType, _ blocks: [UInt8], rows: Int, cols: Int, x: [Float], count n: Int, level: KernelLevel) -> [Float] {
        var y = [Float](repeating: .nan, count: n * rows)
        blocks.withUnsafeBufferPointer { w in
            x.withUnsafeBufferPointer { xs in
                y.withUnsafeMutableBufferPointer { ys in
                    if IntegerDotKernels.ggml32Types.contains(type) {
                        IntegerDotKernels.ggml32(level: level, type: type, w.baseAddress!, rows: rows, cols: cols, x: xs.baseAddress!, count: n, y: ys.baseAddress!)
                    } else {
                        IntegerDotKernels.kQuant(level: level, type: type, w.baseAddress!, rows: rows, cols: cols, x: xs.baseAddress!, count: n, y: ys.baseAddress!)
                    }
                }
            }
        }
        return y
    }

    /// The portable kernel is the dequantised weights times llama.cpp's rounded activations (plus
    /// Q8_1's block-sum term for Q4_1/Q5_1), summed in double: the kernel's only differences are
    /// float rounding of its per-block scale products and sums (each ~2⁻²⁴ relative), so 1e-6 of
    /// Σ|w·x| bounds them with room; the 8-bit rounding itself is in both sides. Every other level
    /// gives the portable kernel's bits.
    @Test(arguments: types)
    func kernelsAreTheDequantisedProductAtEveryLevel(type: GGMLType) {
        // 25 blocks of 32 (the AVX2 one-token loop takes eight at a time: a tail of one), 3 super-blocks of 256.
        let rows = 70, cols = IntegerDotKernels.ggml32Types.contains(type) ? 800 : 768
        for n in [1, 3] { check(type, rows: rows, cols: cols, n: n) }
    }

    func check(_ type: GGMLType, rows: Int, cols: Int, n: Int) {
        let blocks = Self.randomBlocks(type, rows: rows, cols: cols, seed: UInt64(type.rawValue))
        let x = QuantizationTests.random(n * cols, seed: 5).map { $0 * 30 }
        let reference = Self.product(type, blocks, rows: rows, cols: cols, x: x, count: n, level: .portable)
        var rounded = [Float](repeating: 0, count: n * cols), w = [Float](repeating: 0, count: cols)
        let rowBytes = type.byteCount(elements: cols)!
        x.withUnsafeBufferPointer { xs in
            rounded.withUnsafeMutableBufferPointer { out in
                for t in 0..<n { GGMLActivations.round(type, xs.baseAddress! + t * cols, count: cols, into: out.baseAddress! + t * cols) }
            }
        }
        // [n, rows] m·(s − float16(d)·Σq): what Q8_1's stored block sums add (zero for the other types).
        var correction = [Float](repeating: 0, count: n * rows)
        blocks.withUnsafeBufferPointer { bw in
            x.withUnsafeBufferPointer { xs in
                correction.withUnsafeMutableBufferPointer {
                    GGMLKernels.addBlockSumCorrection(type, bw.baseAddress!, rows: rows, cols: cols, x: xs.baseAddress!, count: n, y: $0.baseAddress!)
                }
            }
        }
        for r in 0..<rows {
            blocks.withUnsafeBytes { GGMLDequantize.row(type, $0.baseAddress! + r * rowBytes, count: cols, into: &w) }
            for t in 0..<n {
                var exact = Double(correction[t * rows + r]), magnitude = 0.0
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

    /// Through `WeightMatrix.apply` (dense weights and experts both multiply through it): each token
    /// alone gives the bits it gives in a batch of 5 or 12 (the panel-GEMM size), split over threads or not.
    @Test(arguments: types)
    func weightMatrixUsesTheKernelsAndBatchesAreBitIdentical(type: GGMLType) {
        guard IntegerDotKernels.level != nil else { return }
        let rows = 512, cols = 2048, n = 12
        let blocks = Self.randomBlocks(type, rows: rows, cols: cols, seed: 9)
        let x = QuantizationTests.random(n * cols, seed: 10)
        var alone = [Float](repeating: 0, count: n * rows), batched = alone, five = [Float](repeating: 0, count: 5 * rows)
        blocks.withUnsafeBufferPointer { w in
            let matrix = WeightMatrix(rows: rows, cols: cols, storage: .ggml(type: type, blocks: w.baseAddress!), owner: nil)
            x.withUnsafeBufferPointer { xs in
                alone.withUnsafeMutableBufferPointer { y in
                    for t in 0..<n { matrix.apply(xs.baseAddress! + t * cols, rowCount: 1, into: y.baseAddress! + t * rows) }
                }
                batched.withUnsafeMutableBufferPointer { matrix.apply(xs.baseAddress!, rowCount: n, into: $0.baseAddress!) }
                five.withUnsafeMutableBufferPointer { matrix.apply(xs.baseAddress!, rowCount: 5, into: $0.baseAddress!) }
            }
        }
        #expect(batched.map(\.bitPattern) == alone.map(\.bitPattern), "\(type)")
        #expect(five.map(\.bitPattern) == Array(alone[0..<(5 * rows)]).map(\.bitPattern), "\(type)")
        #expect(Self.product(type, blocks, rows: rows, cols: cols, x: x, count: n, level: .portable).map(\.bitPattern) == batched.map(\.bitPattern))
    }
}
