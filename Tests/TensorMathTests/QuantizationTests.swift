import Testing
import TensorMath

/// Dequantisation error bounds (documented in docs/STORE.md) and the quantised kernels
/// against f32 products over the dequantised weights.
@Suite struct QuantizationTests {
    static func random(_ count: Int, seed: UInt64) -> [Float] {
        var state = seed
        return (0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let unit = Float(state >> 40) / Float(1 << 24) * 2 - 1
            return unit * unit * unit * 0.2 // heavier tails than uniform, like trained weights
        }
    }

    @Test func int8ErrorWithinHalfAStep() {
        let rows = 24, cols = 80
        let w = Self.random(rows * cols, seed: 1)
        let values = AlignedBuffer<Int8>(count: rows * cols), scales = AlignedBuffer<Float>(count: rows)
        let back = AlignedBuffer<Float>(count: rows * cols)
        w.withUnsafeBufferPointer { Quantization.quantizeInt8($0.baseAddress!, rows: rows, cols: cols, values: values.pointer, scales: scales.pointer) }
        Quantization.dequantizeInt8(values.pointer, scales: scales.pointer, rows: rows, cols: cols, into: back.pointer)
        for r in 0..<rows {
            let maximum = (0..<cols).map { abs(w[r * cols + $0]) }.max()!
            for c in 0..<cols { #expect(abs(w[r * cols + c] - back[r * cols + c]) <= maximum / 254 * 1.0001) }
        }
    }

    @Test func q4ErrorWithinHalfAStep() {
        let rows = 8, cols = 96
        let w = Self.random(rows * cols, seed: 2)
        let blocks = AlignedBuffer<UInt8>(count: Quantization.q4BlockBytes(rows: rows, cols: cols))
        let scales = AlignedBuffer<Float>(count: rows * cols / 32), back = AlignedBuffer<Float>(count: rows * cols)
        w.withUnsafeBufferPointer { Quantization.quantizeQ4($0.baseAddress!, rows: rows, cols: cols, blocks: blocks.pointer, scales: scales.pointer) }
        Quantization.dequantizeQ4(blocks.pointer, scales: scales.pointer, rows: rows, cols: cols, into: back.pointer)
        for block in 0..<(rows * cols / 32) {
            let range = block * 32..<(block + 1) * 32
            let maximum = range.map { abs(w[$0]) }.max()!
            for i in range { #expect(abs(w[i] - back[i]) <= maximum / 14 * 1.0001) }
        }
    }

    /// 96 columns: three q4 blocks (one pair plus the odd block) and three 32-byte int8 chunks;
    /// 128: pairs only; 160: int8 chunks plus nothing left over, q4 two pairs and an odd block.
    @Test(arguments: [1, 3, 5], [96, 128, 160])
    func quantisedApplyMatchesF32OverDequantisedWeights(rowCount: Int, cols: Int) {
        let rows = 40
        let w = Self.random(rows * cols, seed: 3), x = Self.random(rowCount * cols, seed: 4)
        let values = AlignedBuffer<Int8>(count: rows * cols), rowScales = AlignedBuffer<Float>(count: rows)
        let blocks = AlignedBuffer<UInt8>(count: Quantization.q4BlockBytes(rows: rows, cols: cols))
        let blockScales = AlignedBuffer<Float>(count: rows * cols / 32)
        w.withUnsafeBufferPointer {
            Quantization.quantizeInt8($0.baseAddress!, rows: rows, cols: cols, values: values.pointer, scales: rowScales.pointer)
            Quantization.quantizeQ4($0.baseAddress!, rows: rows, cols: cols, blocks: blocks.pointer, scales: blockScales.pointer)
        }
        let int8 = WeightMatrix(rows: rows, cols: cols, storage: .int8(values: values.pointer, scales: rowScales.pointer), owner: values)
        let q4 = WeightMatrix(rows: rows, cols: cols, storage: .q4(blocks: blocks.pointer, scales: blockScales.pointer), owner: blocks)
        for matrix in [int8, q4] {
            let dense = WeightMatrix(rows: rows, cols: cols, values: (0..<rows).flatMap { matrix.row($0) })
            var expected = [Float](repeating: 0, count: rowCount * rows), actual = expected
            // With the integer-dot kernels the activations are rounded to 8-bit blocks first: the
            // reference multiplies the same rounded activations (exact in f32).
            var reference = x
            if IntegerDotKernels.level != nil {
                x.withUnsafeBufferPointer { xs in
                    reference.withUnsafeMutableBufferPointer { IntegerDotKernels.roundTripActivations(xs.baseAddress!, count: rowCount, cols: cols, into: $0.baseAddress!) }
                }
            }
            x.withUnsafeBufferPointer { xs in
                reference.withUnsafeBufferPointer { rs in
                    expected.withUnsafeMutableBufferPointer { dense.apply(rs.baseAddress!, rowCount: rowCount, into: $0.baseAddress!) }
                }
                actual.withUnsafeMutableBufferPointer { matrix.apply(xs.baseAddress!, rowCount: rowCount, into: $0.baseAddress!) }
            }
            for (a, b) in zip(expected, actual) { #expect(abs(a - b) <= 1e-5 + 1e-4 * abs(a)) }
        }
    }

    /// The int8 kernel's scalar tail (columns past the last 32-wide chunk).
    @Test func int8ApplyWithATail() {
        let rows = 7, cols = 77
        let w = Self.random(rows * cols, seed: 5), x = Self.random(cols, seed: 6)
        let values = AlignedBuffer<Int8>(count: rows * cols), scales = AlignedBuffer<Float>(count: rows)
        w.withUnsafeBufferPointer { Quantization.quantizeInt8($0.baseAddress!, rows: rows, cols: cols, values: values.pointer, scales: scales.pointer) }
        let int8 = WeightMatrix(rows: rows, cols: cols, storage: .int8(values: values.pointer, scales: scales.pointer), owner: values)
        let dense = WeightMatrix(rows: rows, cols: cols, values: (0..<rows).flatMap { int8.row($0) })
        var expected = [Float](repeating: 0, count: rows), actual = expected
        x.withUnsafeBufferPointer { xs in
            expected.withUnsafeMutableBufferPointer { dense.apply(xs.baseAddress!, rowCount: 1, into: $0.baseAddress!) }
            actual.withUnsafeMutableBufferPointer { int8.apply(xs.baseAddress!, rowCount: 1, into: $0.baseAddress!) }
        }
        for (a, b) in zip(expected, actual) { #expect(abs(a - b) <= 1e-5 + 1e-4 * abs(a)) }
        withExtendedLifetime(scales) {}
    }
}
