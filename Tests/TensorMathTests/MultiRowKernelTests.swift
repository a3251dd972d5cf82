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
