import Testing
@testable import TensorMath

/// Several input rows at once must give, per row, exactly the bits one row alone gives: the
/// engine relies on it for batched greedy decoding to match decoding alone.
@Suite struct MultiRowKernelTests {
    /// `apply` of each row alone vs `applyRowwise` (and `apply` below the GEMM threshold) of all rows.
    func expectRowsIdentical(_ matrix: WeightMatrix, rowCounts: [Int], seed: UInt64) {
        for n in rowCounts {
            let x = randomFloats(n * matrix.cols, seed: seed + UInt64(n))
            var alone = [Float](repeating: 0, count: n * matrix.rows)
            var rowwise = alone, batched = alone
            x.withUnsafeBufferPointer { xp in
                alone.withUnsafeMutableBufferPointer { y in
                    for r in 0..<n { matrix.apply(xp.baseAddress! + r * matrix.cols, rowCount: 1, into: y.baseAddress! + r * matrix.rows) }
                }
                rowwise.withUnsafeMutableBufferPointer { matrix.applyRowwise(xp.baseAddress!, rowCount: n, into: $0.baseAddress!) }
                batched.withUnsafeMutableBufferPointer { matrix.apply(xp.baseAddress!, rowCount: n, into: $0.baseAddress!) }
            }
            #expect(rowwise == alone, "applyRowwise, \(n) rows")
            // Below four rows compressed weights take the GEMV path in `apply` too (f32 uses sgemm).
            if n < 4, case .f32 = matrix.storage {} else if n < 4 { #expect(batched == alone, "apply, \(n) rows (GEMV path)") }
        }
    }

    @Test func bf16RowsMatchOneRowAlone() {
        // 70 columns: blocks of 16 plus a scalar tail.
        for (rows, cols) in [(23, 70), (1100, 1024)] { // the second is split over two threads
            let bits = AlignedBuffer(randomFloats(rows * cols, seed: 5).map(FloatConversion.bf16(from:)))
            let matrix = WeightMatrix(rows: rows, cols: cols, storage: .bf16(UnsafePointer(bits.pointer)), owner: bits)
            expectRowsIdentical(matrix, rowCounts: [1, 2, 3, 4, 5, 8, 9], seed: 6)
        }
    }

    @Test func q4RowsMatchOneRowAlone() {
        for cols in [96, 128] { // an odd and an even number of 32-blocks per row
            let rows = 37
            let w = randomFloats(rows * cols, seed: 7)
            let blocks = AlignedBuffer<UInt8>(count: Quantization.q4BlockBytes(rows: rows, cols: cols))
            let scales = AlignedBuffer<Float>(count: rows * cols / 32)
            w.withUnsafeBufferPointer {
                Quantization.quantizeQ4($0.baseAddress!, rows: rows, cols: cols, blocks: blocks.pointer, scales: scales.pointer)
            }
            let matrix = WeightMatrix(rows: rows, cols: cols, storage: .q4(blocks: blocks.pointer, scales: scales.pointer), owner: blocks)
            withExtendedLifetime(scales) { expectRowsIdentical(matrix, rowCounts: [1, 2, 3, 4, 6, 9], seed: 8) }
        }
    }

    @Test func f32AndInt8RowwiseMatchOneRowAlone() {
        let rows = 29, cols = 64
        let w = randomFloats(rows * cols, seed: 9)
        expectRowsIdentical(WeightMatrix(rows: rows, cols: cols, values: w), rowCounts: [1, 3, 6], seed: 10)
        let values = AlignedBuffer<Int8>(count: rows * cols), scales = AlignedBuffer<Float>(count: rows)
        w.withUnsafeBufferPointer {
            Quantization.quantizeInt8($0.baseAddress!, rows: rows, cols: cols, values: values.pointer, scales: scales.pointer)
        }
        let int8 = WeightMatrix(rows: rows, cols: cols, storage: .int8(values: values.pointer, scales: scales.pointer), owner: values)
        withExtendedLifetime(scales) { expectRowsIdentical(int8, rowCounts: [1, 2, 5], seed: 11) }
    }
}

@Suite struct HalfPrecisionTests {
    /// Every one of the 65,536 half-precision bit patterns widens as `Float(Float16)` does, and
    /// narrowing rounds as `Float16(Float)` does.
    @Test func vectorConversionsMatchScalarOnes() {
        var mismatches = 0
        let patterns = (0..<65536).map { UInt16($0) }
        patterns.withUnsafeBytes { raw in
            for first in stride(from: 0, to: 65536, by: 8) {
                let widened = AttentionKernels.widen(raw.baseAddress! + first * 2)
                for i in 0..<8 {
                    let expected = Float(Float16(bitPattern: UInt16(first + i)))
                    if expected.isNaN ? !widened[i].isNaN : widened[i].bitPattern != expected.bitPattern { mismatches += 1 }
                }
            }
        }
        let floats = randomFloats(1003, seed: 14).map { $0 * 70_000 } + [1e-6, -3e-8, 0, -0.0, 65520, .infinity]
        var narrowed = [UInt16](repeating: 0, count: floats.count)
        AttentionKernels.narrow(floats, into: &narrowed, count: floats.count)
        for (value, bits) in zip(floats, narrowed) where Float16(value).bitPattern != bits { mismatches += 1 }
        #expect(mismatches == 0)
    }

    /// Attention over float16 keys and values equals attention over their float32 widening.
    @Test func halfAttentionKernelsMatchTheFloatOnes() {
        let dim = 72, count = 9, stride = 80 // a tail past the blocks of 16, rows wider than dim
        let query = randomFloats(dim, seed: 12)
        let halves = randomFloats(count * stride, seed: 13).map { Float16($0).bitPattern }
        let widened = halves.map { Float(Float16(bitPattern: $0)) }
        var halfScores = [Float](repeating: 0, count: count), floatScores = halfScores
        var halfContext = [Float](repeating: 0, count: dim), floatContext = halfContext
        AttentionKernels.scores(query: query, halfKeys: halves, keyStride: stride, count: count, dim: dim, scale: 0.5, into: &halfScores)
        AttentionKernels.scores(query: query, keys: widened, keyStride: stride, count: count, dim: dim, scale: 0.5, into: &floatScores)
        AttentionKernels.weightedSum(floatScores, halfValues: halves, valueStride: stride, count: count, dim: dim, into: &halfContext)
        AttentionKernels.weightedSum(floatScores, values: widened, valueStride: stride, count: count, dim: dim, into: &floatContext)
        for j in 0..<count { #expect(abs(halfScores[j] - floatScores[j]) < 1e-5) }
        for d in 0..<dim { #expect(abs(halfContext[d] - floatContext[d]) < 1e-5) }
    }
}
