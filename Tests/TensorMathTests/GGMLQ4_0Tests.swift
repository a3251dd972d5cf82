import Foundation
import Testing
import TensorMath

/// GGUF Q4_0 matrices converted to q4 (`GGMLQ4_0`, issue 22): the same weights bit for bit, on
/// the integer-dot q4 kernels at every level, nibble 0 (−8) included, and row invariant.
@Suite struct GGMLQ4_0Tests {
    /// `rows · cols/32` random Q4_0 blocks: every nibble value (0..15, so −8 too, which our own
    /// quantiser never writes) and float16 scales of both signs over several binades, a subnormal
    /// and a zero among them.
    static func blocks(rows: Int, cols: Int, seed: UInt64) -> [UInt8] {
        var random = SplitMix64(seed: seed)
        let count = rows * cols / 32
        var bytes = [UInt8](repeating: 0, count: count * GGMLQ4_0.blockBytes)
        for b in 0..<count {
            var scale = Float16(random.nextFloat(in: 0.001..<0.05))
            if random.next() % 2 == 0 { scale = -scale }
            if b == 3 { scale = Float16(bitPattern: 0x0003) } // subnormal
            if b == 5 { scale = 0 }
            withUnsafeBytes(of: scale.bitPattern.littleEndian) { bytes[b * 18] = $0[0]; bytes[b * 18 + 1] = $0[1] }
            for j in 0..<16 { bytes[b * 18 + 2 + j] = UInt8(truncatingIfNeeded: random.next()) }
            if b == 0 { for j in 0..<16 { bytes[b * 18 + 2 + j] = 0x00 } } // a block of −8s
        }
        return bytes
    }

    /// The converted matrix's weights are the Q4_0 file's (as `GGMLDequantize` widens them), bit
    /// for bit, and joining gives back the file's bytes.
    @Test func conversionKeepsEveryWeightAndJoinsBack() {
        let (rows, cols) = (7, 96)
        let source = Self.blocks(rows: rows, cols: cols, seed: 1)
        let matrix = source.withUnsafeBytes { GGMLQ4_0.matrix($0.baseAddress!, rows: rows, cols: cols, halfScales: false) }
        guard case .q4(let blocks, let scales) = matrix.storage else { Issue.record("not q4"); return }
        #expect(matrix.byteCount == rows * cols / 32 * 20)
        // With float16 scales (what a GGUF is served with): 18 bytes a block, the same weights, and
        // `floatScales` gives back the float32 form's scales and blocks bit for bit.
        let half = source.withUnsafeBytes { GGMLQ4_0.matrix($0.baseAddress!, rows: rows, cols: cols, halfScales: true) }
        guard case .q4f16 = half.storage else { Issue.record("not q4f16"); return }
        #expect(half.byteCount == rows * cols / 32 * 18)
        for r in 0..<rows { #expect(half.row(r).map(\.bitPattern) == matrix.row(r).map(\.bitPattern), "row \(r), float16 scales") }
        let widened = GGMLQ4_0.floatScales(half)
        guard case .q4(let wideBlocks, let wideScales) = widened.storage else { Issue.record("floatScales is not q4"); return }
        #expect(Array(UnsafeBufferPointer(start: wideScales, count: rows * cols / 32)).map(\.bitPattern)
                == Array(UnsafeBufferPointer(start: scales, count: rows * cols / 32)).map(\.bitPattern))
        #expect(Array(UnsafeBufferPointer(start: wideBlocks, count: rows * cols / 2)) == Array(UnsafeBufferPointer(start: blocks, count: rows * cols / 2)))
        for r in 0..<rows {
            var expected = [Float](repeating: 0, count: cols)
            source.withUnsafeBytes { raw in
                expected.withUnsafeMutableBufferPointer {
                    GGMLDequantize.row(.q4_0, raw.baseAddress! + r * (cols / 32) * 18, count: cols, into: $0.baseAddress!)
                }
            }
            #expect(matrix.row(r).map(\.bitPattern) == expected.map(\.bitPattern), "row \(r)")
        }
        var joined = [UInt8](repeating: 0xAA, count: source.count)
        joined.withUnsafeMutableBytes { GGMLQ4_0.join(blocks: blocks, scales: scales, blockCount: rows * cols / 32, into: $0.baseAddress!) }
        #expect(joined == source)
    }

    /// The integer path computes what the float path over the same ggml blocks computed
    /// (`GGMLKernels` with llama.cpp's 8-bit activation rounding, `MOE_GGUF_Q4_0=ggml`), up to
    /// float summation order: relative to the sum of the products' magnitudes, within 1e-5.
    @Test func theIntegerPathAgreesWithTheFloatPath() {
        guard IntegerDotKernels.level != nil else { return }
        let (rows, cols) = (64, 1024)
        let source = Self.blocks(rows: rows, cols: cols, seed: 9)
        let converted = source.withUnsafeBytes { GGMLQ4_0.matrix($0.baseAddress!, rows: rows, cols: cols) }
        for n in [1, 4, 12] {
            let x = QuantizationTests.random(n * cols, seed: UInt64(100 + n)).map { $0 * 30 }
            let y = Self.apply(converted, x, count: n)
            var f = [Float](repeating: .nan, count: n * rows)
            source.withUnsafeBytes { raw in
                let ggml = WeightMatrix(rows: rows, cols: cols, storage: .ggml(type: .q4_0, blocks: raw.baseAddress!.assumingMemoryBound(to: UInt8.self)), owner: nil)
                x.withUnsafeBufferPointer { xs in f.withUnsafeMutableBufferPointer { ggml.apply(xs.baseAddress!, rowCount: n, into: $0.baseAddress!) } }
            }
            for t in 0..<n {
                for r in 0..<rows {
                    let w = converted.row(r)
                    let magnitude = (0..<cols).reduce(0.0) { $0 + abs(Double(w[$1]) * Double(x[t * cols + $1])) }
                    #expect(abs(Double(y[t * rows + r]) - Double(f[t * rows + r])) <= 1e-5 * magnitude, "row \(r) token \(t) of \(n): \(y[t * rows + r]) vs \(f[t * rows + r])")
                }
            }
        }
    }

    /// `y[n, rows]` of `matrix` through `apply`.
    static func apply(_ matrix: WeightMatrix, _ x: [Float], count n: Int) -> [Float] {
        var y = [Float](repeating: .nan, count: n * matrix.rows)
        x.withUnsafeBufferPointer { xs in y.withUnsafeMutableBufferPointer { matrix.apply(xs.baseAddress!, rowCount: n, into: $0.baseAddress!) } }
        return y
    }

    /// A converted Q4_0 matrix runs on the integer-dot q4 kernels: `apply` gives the bits of
    /// `IntegerDotKernels.q4` over a q4 matrix built separately from the same blocks, at every
    /// level (each handles nibble 0 as −8: the same bits as portable C, and within float
    /// rounding of exact products over the kernels' rounded activations), and each row's bits do
    /// not depend on the rows beside it (1 row alone vs 2, 5, 9 and 40 together: the decode,
    /// nibble and 16-row prefill kernels).
    @Test(arguments: [32, 288, 2080])
    func convertedMatricesRunTheIntegerKernels(cols: Int) {
        guard IntegerDotKernels.level != nil else { return } // MOE_KERNELS=float: nothing to compare
        let rows = 37
        let source = Self.blocks(rows: rows, cols: cols, seed: UInt64(cols))
        let matrix = source.withUnsafeBytes { GGMLQ4_0.matrix($0.baseAddress!, rows: rows, cols: cols) }
        if GGMLQ4_0.keepsHalfScales {
            guard case .q4f16 = matrix.storage else { Issue.record("a GGUF's Q4_0 is not served with float16 scales"); return }
        }
        // The equivalent q4 matrix, built here from the Q4_0 bytes independently of `GGMLQ4_0`.
        let blocks = AlignedBuffer<UInt8>(count: rows * cols / 2), scales = AlignedBuffer<Float>(count: rows * cols / 32)
        let halfScales = AlignedBuffer<UInt16>(count: rows * cols / 32)
        for b in 0..<(rows * cols / 32) {
            halfScales.pointer[b] = UInt16(source[b * 18]) | UInt16(source[b * 18 + 1]) << 8
            scales.pointer[b] = Float(Float16(bitPattern: UInt16(source[b * 18]) | UInt16(source[b * 18 + 1]) << 8))
            for j in 0..<16 { blocks.pointer[b * 16 + j] = source[b * 18 + 2 + j] }
        }
        for n in [1, 2, 3, 4, 5, 7, 8, 9, 17, 40] {
            let x = QuantizationTests.random(n * cols, seed: UInt64(cols + n)).map { $0 * 30 }
            let y = Self.apply(matrix, x, count: n)
            var portable = [Float](repeating: .nan, count: n * rows)
            x.withUnsafeBufferPointer { xs in
                portable.withUnsafeMutableBufferPointer {
                    IntegerDotKernels.q4(blocks.pointer, scales: scales.pointer, rows: rows, cols: cols, x: xs.baseAddress!, count: n,
                                         y: $0.baseAddress!, level: .portable)
                }
            }
            #expect(y.map(\.bitPattern) == portable.map(\.bitPattern), "\(n) rows, \(cols) columns: apply differs from the portable q4 kernel")
            for level in KernelLevel.available {
                var z = [Float](repeating: .nan, count: n * rows)
                x.withUnsafeBufferPointer { xs in
                    z.withUnsafeMutableBufferPointer {
                        IntegerDotKernels.q4(blocks.pointer, scales: scales.pointer, rows: rows, cols: cols, x: xs.baseAddress!, count: n,
                                             y: $0.baseAddress!, level: level)
                    }
                }
                #expect(z.map(\.bitPattern) == portable.map(\.bitPattern), "\(level.name), \(n) rows, \(cols) columns")
                // The float16-scale kernels (`moe_gemm_q4h_q8`) on the file's own scales: the same bits.
                var h = [Float](repeating: .nan, count: n * rows)
                x.withUnsafeBufferPointer { xs in
                    h.withUnsafeMutableBufferPointer {
                        IntegerDotKernels.q4f16(blocks.pointer, scales: halfScales.pointer, rows: rows, cols: cols, x: xs.baseAddress!, count: n,
                                                y: $0.baseAddress!, level: level)
                    }
                }
                #expect(h.map(\.bitPattern) == portable.map(\.bitPattern), "float16 scales, \(level.name), \(n) rows, \(cols) columns")
            }
            // Exact products over the rounded activations and the file's weights.
            var rounded = [Float](repeating: 0, count: n * cols)
            x.withUnsafeBufferPointer { xs in
                rounded.withUnsafeMutableBufferPointer { IntegerDotKernels.roundTripActivations(xs.baseAddress!, count: n, cols: cols, into: $0.baseAddress!) }
            }
            for t in 0..<n {
                for r in 0..<rows {
                    let w = matrix.row(r)
                    var exact = 0.0, magnitude = 0.0
                    for c in 0..<cols { exact += Double(w[c]) * Double(rounded[t * cols + c]); magnitude += abs(Double(w[c]) * Double(rounded[t * cols + c])) }
                    #expect(abs(Double(y[t * rows + r]) - exact) <= 1e-5 * magnitude + 1e-30, "row \(r) token \(t)")
                }
            }
            // Row invariance: each row alone gives the bits it gets among the others.
            for t in 0..<n {
                let alone = Self.apply(matrix, Array(x[t * cols..<(t + 1) * cols]), count: 1)
                #expect(alone.map(\.bitPattern) == y[t * rows..<(t + 1) * rows].map(\.bitPattern), "token \(t) of \(n)")
            }
        }
    }
}

extension GGMLQ4_0Tests {
    /// Rows of more than 1,024 blocks (32,800 columns): the levels without a float16 path of their
    /// own widen a row's scales into a heap buffer instead of the stack one; the bits stay the
    /// float32 kernels'.
    @Test func wideRowsKeepTheBits() {
        let (rows, cols, n) = (5, 32_800, 2)
        let source = Self.blocks(rows: rows, cols: cols, seed: 77)
        let count = rows * cols / 32
        let blocks = AlignedBuffer<UInt8>(count: count * 16), halves = AlignedBuffer<UInt16>(count: count), scales = AlignedBuffer<Float>(count: count)
        for b in 0..<count {
            halves.pointer[b] = UInt16(source[b * 18]) | UInt16(source[b * 18 + 1]) << 8
            scales.pointer[b] = Float(Float16(bitPattern: halves.pointer[b]))
            for j in 0..<16 { blocks.pointer[b * 16 + j] = source[b * 18 + 2 + j] }
        }
        let x = QuantizationTests.random(n * cols, seed: 78).map { $0 * 30 }
        var reference = [Float](repeating: .nan, count: n * rows)
        x.withUnsafeBufferPointer { xs in
            reference.withUnsafeMutableBufferPointer {
                IntegerDotKernels.q4(blocks.pointer, scales: scales.pointer, rows: rows, cols: cols, x: xs.baseAddress!, count: n, y: $0.baseAddress!, level: .portable)
            }
        }
        for level in KernelLevel.available {
            var y = [Float](repeating: .nan, count: n * rows)
            x.withUnsafeBufferPointer { xs in
                y.withUnsafeMutableBufferPointer {
                    IntegerDotKernels.q4f16(blocks.pointer, scales: halves.pointer, rows: rows, cols: cols, x: xs.baseAddress!, count: n, y: $0.baseAddress!, level: level)
                }
            }
            #expect(y.map(\.bitPattern) == reference.map(\.bitPattern), "\(level.name)")
        }
    }
}

/// GGUF Q8_0 matrices on their integer-dot kernel (`IntegerDotKernels.q8_0`, issue 22 item 2): the
/// same bits at every level, exact products over the rounded activations up to float rounding,
/// and row invariant.
@Suite struct GGMLQ8_0Tests {
    /// Random Q8_0 blocks: every int8 value (−128 too) and float16 scales of both signs.
    static func blocks(rows: Int, cols: Int, seed: UInt64) -> [UInt8] {
        var random = SplitMix64(seed: seed)
        let count = rows * cols / 32
        var bytes = [UInt8](repeating: 0, count: count * 34)
        for b in 0..<count {
            var scale = Float16(random.nextFloat(in: 0.0005..<0.01))
            if random.next() % 2 == 0 { scale = -scale }
            withUnsafeBytes(of: scale.bitPattern.littleEndian) { bytes[b * 34] = $0[0]; bytes[b * 34 + 1] = $0[1] }
            for j in 0..<32 { bytes[b * 34 + 2 + j] = UInt8(truncatingIfNeeded: random.next()) }
            if b == 0 { for j in 0..<32 { bytes[b * 34 + 2 + j] = 0x80 } } // a block of −128s
        }
        return bytes
    }

    @Test(arguments: [32, 288, 2080])
    func q8_0RunsTheIntegerKernel(cols: Int) {
        guard let inUse = IntegerDotKernels.level else { return }
        let rows = 37
        let source = Self.blocks(rows: rows, cols: cols, seed: UInt64(cols))
        source.withUnsafeBytes { raw in
            let blocks = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let matrix = WeightMatrix(rows: rows, cols: cols, storage: .ggml(type: .q8_0, blocks: blocks), owner: nil)
            for n in [1, 2, 5, 9, 40] {
                let x = QuantizationTests.random(n * cols, seed: UInt64(cols + n)).map { $0 * 30 }
                let y = GGMLQ4_0Tests.apply(matrix, x, count: n)
                func at(_ level: KernelLevel) -> [Float] {
                    var z = [Float](repeating: .nan, count: n * rows)
                    x.withUnsafeBufferPointer { xs in
                        z.withUnsafeMutableBufferPointer { IntegerDotKernels.q8_0(level: level, blocks, rows: rows, cols: cols, x: xs.baseAddress!, count: n, y: $0.baseAddress!) }
                    }
                    return z
                }
                let portable = at(.portable)
                #expect(y.map(\.bitPattern) == at(inUse).map(\.bitPattern), "apply is not the integer kernel (\(n) rows, \(cols) columns)")
                for level in KernelLevel.available {
                    #expect(at(level).map(\.bitPattern) == portable.map(\.bitPattern), "\(level.name), \(n) rows, \(cols) columns")
                }
                var rounded = [Float](repeating: 0, count: n * cols)
                x.withUnsafeBufferPointer { xs in
                    rounded.withUnsafeMutableBufferPointer { IntegerDotKernels.roundTripActivations(xs.baseAddress!, count: n, cols: cols, into: $0.baseAddress!) }
                }
                for r in 0..<rows {
                    var w = [Float](repeating: 0, count: cols)
                    w.withUnsafeMutableBufferPointer { GGMLDequantize.row(.q8_0, raw.baseAddress! + r * (cols / 32) * 34, count: cols, into: $0.baseAddress!) }
                    for t in 0..<n {
                        var exact = 0.0, magnitude = 0.0
                        for c in 0..<cols { exact += Double(w[c]) * Double(rounded[t * cols + c]); magnitude += abs(Double(w[c]) * Double(rounded[t * cols + c])) }
                        #expect(abs(Double(y[t * rows + r]) - exact) <= 1e-5 * magnitude + 1e-30, "row \(r) token \(t)")
                    }
                }
                for t in 0..<n {
                    let alone = GGMLQ4_0Tests.apply(matrix, Array(x[t * cols..<(t + 1) * cols]), count: 1)
                    #expect(alone.map(\.bitPattern) == y[t * rows..<(t + 1) * rows].map(\.bitPattern), "token \(t) of \(n)")
                }
            }
        }
    }
}
