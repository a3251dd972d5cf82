import Dispatch

/// GEMV kernels over several input rows at once: `y[j] = W · x[j]` for up to four `x[j]`,
/// reading and widening each weight once for all of them.
///
/// Batched decoding hands an expert two or three tokens, and the LM head one row per
/// sequence; running the single-row kernel per row re-reads and re-widens the weights each
/// time, which is most of their cost (q4 widening is compute, not memory). For every output
/// the arithmetic is the single-row kernel's, in the same order, so a token's result does not
/// depend on which other tokens share its batch: batched greedy decoding stays bit-identical
/// to decoding alone.
public enum MultiRowKernels {
    /// `y[j, rows] = W[rows, cols] · x[j, cols]` for `j < count`, W in bf16; `x` rows are
    /// `cols` apart and `y` rows `rows` apart. Large matrices are split over two threads.
    public static func bf16(_ w: UnsafePointer<UInt16>, rows: Int, cols: Int, x: UnsafePointer<Float>, count: Int,
                            y: UnsafeMutablePointer<Float>) {
        let blocks = cols / 16
        var first = 0
        while first < count {
            let group = min(4, count - first)
            let xg = x + first * cols, yg = y + first * rows
            withUnsafeTemporaryAllocation(of: Float.self, capacity: max(group * blocks * 16, 1)) { buffer in
                let permuted = buffer.baseAddress!
                for j in 0..<group {
                    BF16Kernels.permute(xg + j * cols, blocks: blocks, into: permuted + j * blocks * 16)
                }
                let px = UnsafePointer(permuted)
                func run(_ range: Range<Int>) {
                    switch group {
                    case 4: bf16Rows(FourRows.self, w, range, cols: cols, blocks: blocks, permutedX: px, x: xg, y: yg, yStride: rows)
                    case 3: bf16Rows(ThreeRows.self, w, range, cols: cols, blocks: blocks, permutedX: px, x: xg, y: yg, yStride: rows)
                    case 2: bf16Rows(TwoRows.self, w, range, cols: cols, blocks: blocks, permutedX: px, x: xg, y: yg, yStride: rows)
                    default: BF16Kernels.rowRange(w, range, cols: cols, blocks: blocks, permutedX: px, x: xg, y: yg)
                    }
                }
                if rows * cols >= BF16Kernels.parallelThreshold && rows >= 64 {
                    let half = (rows / 2 + 7) & ~7
                    let step = UncheckedSendable(run)
                    DispatchQueue.concurrentPerform(iterations: 2) { part in
                        step.value(part == 0 ? 0..<half : half..<rows)
                    }
                } else {
                    run(0..<rows)
                }
            }
            first += group
        }
    }

    /// `G.count` x rows against weight rows `range`; per output the arithmetic of `BF16Kernels.rowRange`.
    /// Generic so that each group size compiles to its own loop with only the accumulators it
    /// uses (the unused ones and their loads are dead code once `G.count` is a constant).
    @inline(__always)
    static func bf16Rows<G: RowGroup>(_: G.Type, _ w: UnsafePointer<UInt16>, _ range: Range<Int>, cols: Int, blocks: Int,
                                      permutedX px: UnsafePointer<Float>, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, yStride: Int) {
        let stride = blocks * 16
        let n = G.count
        let p0 = UnsafeRawPointer(px), p1 = UnsafeRawPointer(px + (n > 1 ? stride : 0))
        let p2 = UnsafeRawPointer(px + (n > 2 ? 2 * stride : 0)), p3 = UnsafeRawPointer(px + (n > 3 ? 3 * stride : 0))
        for r in range {
            let row = UnsafeRawPointer(w + r * cols)
            var e0 = SIMD8<Float>(), o0 = SIMD8<Float>(), e1 = SIMD8<Float>(), o1 = SIMD8<Float>()
            var e2 = SIMD8<Float>(), o2 = SIMD8<Float>(), e3 = SIMD8<Float>(), o3 = SIMD8<Float>()
            for b in 0..<blocks {
                let lanes = row.loadUnaligned(fromByteOffset: b * 32, as: SIMD8<UInt32>.self)
                let we = BF16Kernels.widenEven(lanes), wo = BF16Kernels.widenOdd(lanes)
                let offset = b * 64
                e0.addProduct(we, p0.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self))
                o0.addProduct(wo, p0.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self))
                if n > 1 {
                    e1.addProduct(we, p1.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self))
                    o1.addProduct(wo, p1.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self))
                }
                if n > 2 {
                    e2.addProduct(we, p2.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self))
                    o2.addProduct(wo, p2.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self))
                }
                if n > 3 {
                    e3.addProduct(we, p3.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self))
                    o3.addProduct(wo, p3.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self))
                }
            }
            let wr = w + r * cols, from = blocks * 16
            y[r] = (e0 + o0).sum() + BF16Kernels.tail(wr, cols: cols, from: from, x: x)
            if n > 1 { y[yStride + r] = (e1 + o1).sum() + BF16Kernels.tail(wr, cols: cols, from: from, x: x + cols) }
            if n > 2 { y[2 * yStride + r] = (e2 + o2).sum() + BF16Kernels.tail(wr, cols: cols, from: from, x: x + 2 * cols) }
            if n > 3 { y[3 * yStride + r] = (e3 + o3).sum() + BF16Kernels.tail(wr, cols: cols, from: from, x: x + 3 * cols) }
        }
    }

    /// `y[j, rows] = W[rows, cols] · x[j, cols]` for `j < count`, W in q4 blocks.
    public static func q4(_ blocks: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, rows: Int, cols: Int,
                          x: UnsafePointer<Float>, count: Int, y: UnsafeMutablePointer<Float>) {
        var first = 0
        while first < count {
            let group = min(4, count - first)
            let xg = x + first * cols, yg = y + first * rows
            switch group {
            case 4: q4Rows(FourRows.self, blocks, scales: scales, rows: rows, cols: cols, x: xg, y: yg)
            case 3: q4Rows(ThreeRows.self, blocks, scales: scales, rows: rows, cols: cols, x: xg, y: yg)
            case 2: q4Rows(TwoRows.self, blocks, scales: scales, rows: rows, cols: cols, x: xg, y: yg)
            default: QuantizedKernels.gemvQ4(blocks, scales: scales, rows: rows, cols: cols, x: xg, y: yg)
            }
            first += group
        }
    }

    /// `G.count` x rows; per output the arithmetic of `QuantizedKernels.gemvQ4`. Unpacking the
    /// nibbles is most of a q4 GEMV's cost, so it is done once per weight for all the rows.
    @inline(__always)
    static func q4Rows<G: RowGroup>(_: G.Type, _ blocks: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, rows: Int, cols: Int,
                                    x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let n = G.count
        let blocksPerRow = cols / Quantization.q4BlockSize
        let pairs = blocksPerRow / 2
        let stride = QuantizedKernels.permutedQ4Count(pairs: pairs) // floats per row of permuted x and its pair sums
        withUnsafeTemporaryAllocation(of: Float.self, capacity: max(n * stride, 1)) { buffer in
            for j in 0..<n { QuantizedKernels.permuteForQ4(x + j * cols, pairs: pairs, into: buffer.baseAddress! + j * stride) }
            let p0 = UnsafeRawPointer(buffer.baseAddress!)
            let p1 = p0 + (n > 1 ? stride * 4 : 0), p2 = p0 + (n > 2 ? 2 * stride * 4 : 0), p3 = p0 + (n > 3 ? 3 * stride * 4 : 0)
            for r in 0..<rows {
                let rowBlocks = UnsafeRawPointer(blocks + r * blocksPerRow * Quantization.q4BlockBytes)
                let rowScales = scales + r * blocksPerRow
                var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                for pair in 0..<pairs {
                    let lanes = rowBlocks.loadUnaligned(fromByteOffset: pair * 32, as: SIMD8<UInt32>.self)
                    let base = pair * 256
                    let sumOffset = (QuantizedKernels.q4SumsOffset(pairs: pairs) + pair * 8) * MemoryLayout<Float>.stride
                    var b0 = p0.loadUnaligned(fromByteOffset: sumOffset, as: SIMD8<Float>.self) * -8
                    var b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
                    if n > 1 { b1 = p1.loadUnaligned(fromByteOffset: sumOffset, as: SIMD8<Float>.self) * -8 }
                    if n > 2 { b2 = p2.loadUnaligned(fromByteOffset: sumOffset, as: SIMD8<Float>.self) * -8 }
                    if n > 3 { b3 = p3.loadUnaligned(fromByteOffset: sumOffset, as: SIMD8<Float>.self) * -8 }
                    for k in 0..<4 {
                        let shift = UInt32(8 * k)
                        let low = QuantizedKernels.nibbles(lanes, shift: shift)
                        let high = QuantizedKernels.nibbles(lanes, shift: shift + 4)
                        let o = base + k * 64
                        b0.addProduct(low, p0.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self))
                        b0.addProduct(high, p0.loadUnaligned(fromByteOffset: o + 32, as: SIMD8<Float>.self))
                        if n > 1 {
                            b1.addProduct(low, p1.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self))
                            b1.addProduct(high, p1.loadUnaligned(fromByteOffset: o + 32, as: SIMD8<Float>.self))
                        }
                        if n > 2 {
                            b2.addProduct(low, p2.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self))
                            b2.addProduct(high, p2.loadUnaligned(fromByteOffset: o + 32, as: SIMD8<Float>.self))
                        }
                        if n > 3 {
                            b3.addProduct(low, p3.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self))
                            b3.addProduct(high, p3.loadUnaligned(fromByteOffset: o + 32, as: SIMD8<Float>.self))
                        }
                    }
                    let scale = SIMD8<Float>(lowHalf: SIMD4(repeating: rowScales[2 * pair]), highHalf: SIMD4(repeating: rowScales[2 * pair + 1]))
                    a0.addProduct(b0, scale)
                    if n > 1 { a1.addProduct(b1, scale) }
                    if n > 2 { a2.addProduct(b2, scale) }
                    if n > 3 { a3.addProduct(b3, scale) }
                }
                y[r] = QuantizedKernels.withOddBlock(a0.sum(), rowBlocks, rowScales, blocksPerRow: blocksPerRow, x: x)
                if n > 1 { y[rows + r] = QuantizedKernels.withOddBlock(a1.sum(), rowBlocks, rowScales, blocksPerRow: blocksPerRow, x: x + cols) }
                if n > 2 { y[2 * rows + r] = QuantizedKernels.withOddBlock(a2.sum(), rowBlocks, rowScales, blocksPerRow: blocksPerRow, x: x + 2 * cols) }
                if n > 3 { y[3 * rows + r] = QuantizedKernels.withOddBlock(a3.sum(), rowBlocks, rowScales, blocksPerRow: blocksPerRow, x: x + 3 * cols) }
            }
        }
    }
}

/// How many x rows a multi-row kernel runs over, as a type so that each count is its own
/// specialisation with the count a compile-time constant.
protocol RowGroup { static var count: Int { get } }
enum TwoRows: RowGroup { static var count: Int { 2 } }
enum ThreeRows: RowGroup { static var count: Int { 3 } }
enum FourRows: RowGroup { static var count: Int { 4 } }
