import Testing
@testable import TensorMath

/// MXFP4 blocks: the e2m1 and e8m0 decoding, llama.cpp's nibble order, the repacking of
/// gpt-oss's safetensors blocks, and the kernel against plain dequantized arithmetic.
@Suite struct MXFP4Tests {
    @Test func exponentsDecodeAsPowersOfTwo() {
        #expect(MXFP4.scale(127) == 1)
        #expect(MXFP4.scale(128) == 2)
        #expect(MXFP4.scale(120) == 1.0 / 128)
        #expect(MXFP4.scale(1) == Float(sign: .plus, exponent: -126, significand: 1))
        #expect(MXFP4.scale(0) == Float(sign: .plus, exponent: -127, significand: 1)) // subnormal
        #expect(MXFP4.scale(255).isNaN)
    }

    /// The kernel computes e2m1 values from their bits; every code equals the table, sign of zero included.
    @Test func computedValuesEqualTheTable() {
        let codes = SIMD16<UInt32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
        let computed = MXFP4.values(codes)
        for code in 0..<16 { #expect(computed[code].bitPattern == MXFP4.e2m1[code].bitPattern, "code \(code)") }
    }

    /// llama.cpp's `block_mxfp4`: exponent byte first, then `qs[j]` with value j in the low
    /// nibble and value j + 16 in the high one.
    @Test func blockLayoutIsLlamaCpps() {
        var block = [UInt8](repeating: 0, count: MXFP4.blockBytes)
        block[0] = 128 // scale 2
        block[1] = 0x2F // value 0: code 0xF = -6, value 16: code 0x2 = 1
        block[16] = 0x70 // value 15: 0, value 31: code 7 = 6
        var out = [Float](repeating: 1, count: 32)
        MXFP4.dequantize(block, rows: 1, cols: 32, into: &out)
        #expect(out[0] == -12 && out[16] == 2 && out[15] == 0 && out[31] == 12)
        #expect(out.enumerated().allSatisfy { [0, 16, 31].contains($0.offset) || $0.element == 0 })
    }

    /// gpt-oss's safetensors blocks hold value 2k in the low and 2k+1 in the high nibble of
    /// byte k (transformers' `_convert_moe_packed_tensors`); repacked, every value is kept.
    @Test func repackingKeepsEveryValue() {
        var generator = SplitMix64(seed: 3)
        let source = (0..<16).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        var expected = [Float](repeating: 0, count: 32)
        for k in 0..<16 {
            expected[2 * k] = MXFP4.e2m1[Int(source[k] & 0xF)] * 0.25
            expected[2 * k + 1] = MXFP4.e2m1[Int(source[k] >> 4)] * 0.25
        }
        var block = [UInt8](repeating: 0, count: MXFP4.blockBytes)
        source.withUnsafeBufferPointer { MXFP4.repack(huggingFaceBlock: $0.baseAddress!, scale: 125, into: &block) }
        var out = [Float](repeating: 0, count: 32)
        MXFP4.dequantize(block, rows: 1, cols: 32, into: &out)
        #expect(out.map(\.bitPattern) == expected.map(\.bitPattern))
    }

    @Test func quantizingRoundsToTheNearestStep() {
        let rows = 5, cols = 64
        let w = randomFloats(rows * cols, seed: 12)
        var blocks = [UInt8](repeating: 0, count: MXFP4.byteCount(rows: rows, cols: cols))
        var back = [Float](repeating: 0, count: rows * cols)
        w.withUnsafeBufferPointer { MXFP4.quantize($0.baseAddress!, rows: rows, cols: cols, into: &blocks) }
        MXFP4.dequantize(blocks, rows: rows, cols: cols, into: &back)
        for b in 0..<(rows * cols / 32) {
            let d = MXFP4.scale(blocks[b * MXFP4.blockBytes])
            let group = (b * 32)..<((b + 1) * 32)
            let amax = group.map { abs(w[$0]) }.max()!
            #expect(amax <= 6 * d && amax > 3 * d, "block \(b): the exponent fits its largest value")
            // e2m1 steps are at most 2·d apart (between 4 and 6): half a step is d.
            #expect(group.allSatisfy { abs(w[$0] - back[$0]) <= d * 1.0001 })
        }
    }

    /// The kernel against dequantized weights and a plain dot product, for 1-8 input rows and a
    /// matrix large enough to be split over two threads; rows identical whatever their company.
    /// The C kernel's arithmetic is fixed per output: every instruction-set level and every batch
    /// size give the portable level's bits.
    @Test func everyKernelLevelGivesThePortableBits() {
        let rows = 37, cols = 320
        var generator = SplitMix64(seed: 11)
        let blocks = AlignedBuffer<UInt8>(count: MXFP4.byteCount(rows: rows, cols: cols))
        for i in 0..<blocks.count { blocks[i] = UInt8(truncatingIfNeeded: generator.next()) }
        for b in 0..<(rows * cols / 32) { blocks[b * MXFP4.blockBytes] = UInt8(118 + b % 14) }
        for n in [1, 5, 8] {
            let x = randomFloats(n * cols, seed: UInt64(40 + n))
            func product(_ level: KernelLevel, count: Int) -> [Float] {
                var y = [Float](repeating: 0, count: n * rows)
                x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { yp in
                        var first = 0
                        while first < n {
                            let c = min(count, n - first)
                            MXFP4.rowRange(blocks.pointer, 0..<rows, cols: cols, x: xp.baseAddress! + first * cols, count: c,
                                           y: yp.baseAddress! + first * rows, yStride: rows, level: level)
                            first += c
                        }
                    }
                }
                return y
            }
            let portable = product(.portable, count: n)
            for level in KernelLevel.available {
                #expect(product(level, count: n).map(\.bitPattern) == portable.map(\.bitPattern), "\(level), \(n) rows")
                #expect(product(level, count: 1).map(\.bitPattern) == portable.map(\.bitPattern), "\(level), one row at a time")
            }
        }
    }

    /// The integer-dot kernel (`moe_gemm_mxfp4_q8`): every level, any batch size and one row at a
    /// time give the portable level's bits (the block sums are exact integers), with extreme
    /// exponents (subnormal scales included) and a partial last group of blocks; and the result is
    /// the dot product of the dequantized weights with the activations as quantised to 8 bits.
    @Test func integerKernelGivesThePortableBitsAtEveryLevel() {
        let rows = 37, cols = 320 // 10 blocks a row: one group of 8 and a partial one
        var generator = SplitMix64(seed: 17)
        let blocks = AlignedBuffer<UInt8>(count: MXFP4.byteCount(rows: rows, cols: cols))
        for i in 0..<blocks.count { blocks[i] = UInt8(truncatingIfNeeded: generator.next()) }
        let exponents: [UInt8] = [0, 1, 2, 120, 121, 124, 126, 127, 128, 130, 140, 200]
        for b in 0..<(rows * cols / 32) { blocks[b * MXFP4.blockBytes] = exponents[b % exponents.count] }
        let dense = AlignedBuffer<Float>(count: rows * cols)
        MXFP4.dequantize(blocks.pointer, rows: rows, cols: cols, into: dense.pointer)
        for n in [1, 3, 5, 8, 13] {
            let x = randomFloats(n * cols, seed: UInt64(60 + n))
            func product(_ level: KernelLevel, count: Int) -> [Float] {
                var y = [Float](repeating: 0, count: n * rows)
                x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { yp in
                        var first = 0
                        while first < n {
                            let c = min(count, n - first)
                            IntegerDotKernels.mxfp4(blocks.pointer, rows: rows, cols: cols, x: xp.baseAddress! + first * cols, count: c,
                                                    y: yp.baseAddress! + first * rows, level: level)
                            first += c
                        }
                    }
                }
                return y
            }
            let portable = product(.portable, count: n)
            for level in KernelLevel.available {
                #expect(product(level, count: n).map(\.bitPattern) == portable.map(\.bitPattern), "\(level), \(n) rows")
                #expect(product(level, count: 1).map(\.bitPattern) == portable.map(\.bitPattern), "\(level), one row at a time")
            }
            var rounded = [Float](repeating: 0, count: n * cols)
            x.withUnsafeBufferPointer { IntegerDotKernels.roundTripActivations($0.baseAddress!, count: n, cols: cols, into: &rounded) }
            for r in 0..<n {
                for o in 0..<rows {
                    var exact: Double = 0, magnitude: Double = 0
                    for c in 0..<cols {
                        let p = Double(dense[o * cols + c]) * Double(rounded[r * cols + c])
                        exact += p
                        magnitude += abs(p)
                    }
                    #expect(abs(Double(portable[r * rows + o]) - exact) <= 1e-6 * magnitude + 1e-30, "row \(r), output \(o)")
                }
            }
        }
    }

    /// The integer-dot kernel at gpt-oss-20b's width: 2880 columns are 90 blocks, five whole
    /// 16-block groups of the nibble kernel (mxfp4_avx512.c) and a short group of 10, or eleven
    /// 8-block groups and 2 left for the block-group kernels; 77 weight rows (no multiple of a row
    /// tile or of the two-thread split: the 16-row prefill tile's last tile has 13 live rows);
    /// 1...19 token rows (the nibble kernel's 8-token tile, the block-group kernel's 4-token
    /// tile, the 16-row tile's pairs of tokens from 8 on, and their remainders). At every level, and by the
    /// block-group kernel too where the nibble kernel is the default, the bits are the portable
    /// level's, batched or one token at a time, and a token's outputs do not depend on how many
    /// tokens share the call; the portable result is the dot product of the dequantized weights
    /// with the activations as the kernel sees them (`roundTripActivations`).
    @Test func integerKernelAtGptOssWidth() {
        let rows = 77, cols = 2880, maxTokens = 19
        var generator = SplitMix64(seed: 29)
        let blocks = AlignedBuffer<UInt8>(count: MXFP4.byteCount(rows: rows, cols: cols))
        for i in 0..<blocks.count { blocks[i] = UInt8(truncatingIfNeeded: generator.next()) }
        // gpt-oss's exponents (scales 2^-9...2^-2), and every 53rd block an extreme one (subnormal
        // half scales, large ones), in whole groups and in the short last group alike.
        let extremes: [UInt8] = [0, 1, 2, 140, 200]
        for b in 0..<(rows * cols / 32) {
            blocks[b * MXFP4.blockBytes] = b % 53 == 0 ? extremes[(b / 53) % extremes.count] : UInt8(118 + generator.next() % 8)
        }
        let dense = AlignedBuffer<Float>(count: rows * cols)
        MXFP4.dequantize(blocks.pointer, rows: rows, cols: cols, into: dense.pointer)
        var x = randomFloats(maxTokens * cols, seed: 71)
        for c in (3 * cols + 2848)..<(3 * cols + 2880) { x[c] = 0 } // an all-zero activation block (scale 0) in the short group
        func product(_ level: KernelLevel, tokens n: Int, perCall: Int, rowsKernel: Bool = false) -> [Float] {
            var y = [Float](repeating: 0, count: n * rows)
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    var first = 0
                    while first < n {
                        let c = min(perCall, n - first)
                        let (xs, ys) = (xp.baseAddress! + first * cols, yp.baseAddress! + first * rows)
                        if rowsKernel {
                            MXFP4.integerProductByRowsKernel(blocks.pointer, rows: rows, cols: cols, x: xs, count: c, y: ys, level: level)
                        } else {
                            IntegerDotKernels.mxfp4(blocks.pointer, rows: rows, cols: cols, x: xs, count: c, y: ys, level: level)
                        }
                        first += c
                    }
                }
            }
            return y
        }
        let all = product(.portable, tokens: maxTokens, perCall: maxTokens).map(\.bitPattern)
        let variants = KernelLevel.available.map { ($0, false) } + [(KernelLevel.detected, true)]
        for n in 1...maxTokens {
            let portable = product(.portable, tokens: n, perCall: n).map(\.bitPattern)
            #expect(portable == Array(all[0..<(n * rows)]), "portable, \(n) tokens: each token's outputs as among \(maxTokens)")
            for (level, rowsKernel) in variants {
                let name = "\(level)\(rowsKernel ? " block-group kernel" : ""), \(n) tokens"
                #expect(product(level, tokens: n, perCall: n, rowsKernel: rowsKernel).map(\.bitPattern) == portable, "\(name)")
                #expect(product(level, tokens: n, perCall: 1, rowsKernel: rowsKernel).map(\.bitPattern) == portable, "\(name), one at a time")
            }
        }
        // Against float arithmetic: each output's error is at most one rounding per fma into its
        // accumulator lane (90 blocks over 8 lanes: 12) and per step of the final sum (3), each
        // at most 2^-24 of the sum of the products' magnitudes: (12 + 3) · 2^-24 < 1e-6.
        var seen = [Float](repeating: 0, count: maxTokens * cols)
        x.withUnsafeBufferPointer { IntegerDotKernels.roundTripActivations($0.baseAddress!, count: maxTokens, cols: cols, into: &seen) }
        #expect(seen[(3 * cols + 2848)..<(3 * cols + 2880)].allSatisfy { $0 == 0 })
        for t in 0..<maxTokens {
            for o in 0..<rows {
                var exact: Double = 0, magnitude: Double = 0
                for c in 0..<cols {
                    let p = Double(dense[o * cols + c]) * Double(seen[t * cols + c])
                    exact += p
                    magnitude += abs(p)
                }
                let got = Double(Float(bitPattern: all[t * rows + o]))
                #expect(abs(got - exact) <= 1e-6 * magnitude + 1e-30, "token \(t), output \(o): \(got) against \(exact)")
            }
        }
    }

    /// `apply` (the integer-dot kernel unless `MOE_KERNELS=float`) against dequantized weights and
    /// a plain dot product with the activations the kernel sees (8-bit blocks on the integer path).
    @Test func kernelMatchesDequantizedProduct() {
        for (rows, cols) in [(9, 64), (1100, 1024)] {
            var generator = SplitMix64(seed: UInt64(rows))
            let blocks = AlignedBuffer<UInt8>(count: MXFP4.byteCount(rows: rows, cols: cols))
            for i in 0..<blocks.count { blocks[i] = UInt8(truncatingIfNeeded: generator.next()) }
            for b in 0..<(rows * cols / 32) { blocks[b * MXFP4.blockBytes] = UInt8(120 + b % 10) }
            let dense = AlignedBuffer<Float>(count: rows * cols)
            MXFP4.dequantize(blocks.pointer, rows: rows, cols: cols, into: dense.pointer)
            let matrix = WeightMatrix(rows: rows, cols: cols, storage: .mxfp4(blocks: blocks.pointer), owner: blocks)
            for n in [1, 3, 8, 12] {
                let x = randomFloats(n * cols, seed: UInt64(n))
                var y = [Float](repeating: 0, count: n * rows), alone = y
                x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { matrix.apply(xp.baseAddress!, rowCount: n, into: $0.baseAddress!) }
                    alone.withUnsafeMutableBufferPointer { out in
                        for r in 0..<n { matrix.applyRowwise(xp.baseAddress! + r * cols, rowCount: 1, into: out.baseAddress! + r * rows) }
                    }
                }
                var rowwise = [Float](repeating: 0, count: n * rows)
                x.withUnsafeBufferPointer { xp in rowwise.withUnsafeMutableBufferPointer { matrix.applyRowwise(xp.baseAddress!, rowCount: n, into: $0.baseAddress!) } }
                #expect(rowwise == alone, "\(n) rows: each row as alone")
                var seen = x
                if IntegerDotKernels.level != nil {
                    x.withUnsafeBufferPointer { IntegerDotKernels.roundTripActivations($0.baseAddress!, count: n, cols: cols, into: &seen) }
                }
                for r in 0..<n {
                    for o in 0..<rows {
                        var exact: Double = 0
                        for c in 0..<cols { exact += Double(dense[o * cols + c]) * Double(seen[r * cols + c]) }
                        let magnitude = (0..<cols).reduce(0.0) { $0 + abs(Double(dense[o * cols + $1]) * Double(seen[r * cols + $1])) }
                        #expect(abs(Double(y[r * rows + o]) - exact) <= 1e-5 * magnitude + 1e-6)
                    }
                }
            }
        }
    }
}
