/// SIMD kernels over int8 and q4 weights: dequantise on the fly, one 16-lane vector at a time.
///
/// int8 values are widened to floats with the "magic number" trick (OR the unsigned value into
/// the mantissa of 2²³ and subtract 2²³) because it needs only zero-extension, OR and a float
/// subtract, which the compiler reliably vectorises; Swift's generic integer→float SIMD
/// conversion does not always lower to `vcvtdq2ps`. For q4 nibbles in 32-bit lanes it does
/// (`SIMD8<Int32>` → `SIMD8<Float>`, checked in the disassembly), and one conversion beats the
/// OR and subtract: see `gemvQ4`.
public enum QuantizedKernels {
    private static let magic = SIMD16<UInt32>(repeating: 0x4B00_0000) // bits of 2²³

    /// 16 int8 values at `pointer`, as floats.
    @inline(__always)
    static func widenInt8(_ pointer: UnsafeRawPointer) -> SIMD16<Float> {
        // Flipping the sign bit maps q ∈ [-128, 127] to q + 128 ∈ [0, 255].
        let raw = pointer.loadUnaligned(as: SIMD16<UInt8>.self) ^ SIMD16<UInt8>(repeating: 0x80)
        let bits = SIMD16<UInt32>(truncatingIfNeeded: raw) | magic
        return unsafeBitCast(bits, to: SIMD16<Float>.self) - SIMD16<Float>(repeating: 8_388_608 + 128)
    }

    /// One q4 block (16 bytes at `pointer`) as its elements 0..<16 and 16..<32, unscaled.
    @inline(__always)
    static func widenQ4Block(_ pointer: UnsafeRawPointer) -> (SIMD16<Float>, SIMD16<Float>) {
        let raw = pointer.loadUnaligned(as: SIMD16<UInt8>.self)
        let low = SIMD16<UInt32>(truncatingIfNeeded: raw & SIMD16<UInt8>(repeating: 0x0F)) | magic
        let high = SIMD16<UInt32>(truncatingIfNeeded: raw &>> 4) | magic
        let offset = SIMD16<Float>(repeating: 8_388_608 + 8)
        return (unsafeBitCast(low, to: SIMD16<Float>.self) - offset, unsafeBitCast(high, to: SIMD16<Float>.self) - offset)
    }

    private static let magic8 = SIMD8<UInt32>(repeating: 0x4B00_0000)

    /// Byte `k` of each 32-bit lane, as floats minus `offset` (2²³ + bias removed).
    @inline(__always)
    static func byteLane(_ lanes: SIMD8<UInt32>, shift: UInt32, mask: UInt32, offset: Float) -> SIMD8<Float> {
        let bits = ((lanes &>> shift) & SIMD8<UInt32>(repeating: mask)) | magic8
        return unsafeBitCast(bits, to: SIMD8<Float>.self) - SIMD8<Float>(repeating: 8_388_608 + offset)
    }

    /// `y[rows] = W[rows, cols] · x[cols]` with W int8 and one scale per row.
    ///
    /// 32 weights are loaded as eight 32-bit lanes; byte k of lane i is weight 4i + k, so the
    /// bytes are isolated with shifts and masks on whole vectors (which lower to AVX2 integer
    /// ops) against an `x` permuted the same way once per call. Widening lane by lane with
    /// `SIMD16<UInt32>(truncatingIfNeeded:)` compiled to scalar code: 2.7 GB/s against 26 GB/s
    /// for bf16.
    public static func gemvInt8(_ w: UnsafePointer<Int8>, scales: UnsafePointer<Float>, rows: Int, cols: Int,
                                x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let chunks = cols / 32
        let tail = chunks * 32
        withUnsafeTemporaryAllocation(of: Float.self, capacity: max(tail, 1)) { permuted in
            // permuted[(chunk·4 + k)·8 + i] = x[chunk·32 + 4i + k]
            for chunk in 0..<chunks {
                for k in 0..<4 { for i in 0..<8 { permuted[(chunk * 4 + k) * 8 + i] = x[chunk * 32 + 4 * i + k] } }
            }
            let px = UnsafeRawPointer(permuted.baseAddress!)
            let flip = SIMD8<UInt32>(repeating: 0x8080_8080) // q ∈ [-128, 127] → q + 128 ∈ [0, 255]
            for r in 0..<rows {
                let row = UnsafeRawPointer(w + r * cols)
                var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                for chunk in 0..<chunks {
                    let lanes = row.loadUnaligned(fromByteOffset: chunk * 32, as: SIMD8<UInt32>.self) ^ flip
                    let xs = px + chunk * 128
                    a0.addProduct(byteLane(lanes, shift: 0, mask: 0xFF, offset: 128), xs.loadUnaligned(as: SIMD8<Float>.self))
                    a1.addProduct(byteLane(lanes, shift: 8, mask: 0xFF, offset: 128), xs.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self))
                    a2.addProduct(byteLane(lanes, shift: 16, mask: 0xFF, offset: 128), xs.loadUnaligned(fromByteOffset: 64, as: SIMD8<Float>.self))
                    a3.addProduct(byteLane(lanes, shift: 24, mask: 0xFF, offset: 128), xs.loadUnaligned(fromByteOffset: 96, as: SIMD8<Float>.self))
                }
                var sum = ((a0 + a1) + (a2 + a3)).sum()
                for c in tail..<cols { sum += Float(w[r * cols + c]) * x[c] }
                // The row's scale factors out of the dot product: one multiply per row.
                y[r] = sum * scales[r]
            }
        }
    }

    /// `y[rows] = W[rows, cols] · x[cols]` with W in q4 blocks (`cols` a multiple of 32).
    ///
    /// Two blocks (64 weights, 32 bytes) are loaded as eight 32-bit lanes: lanes 0–3 hold the
    /// first block, 4–7 the second; byte k of lane i holds weight 4(i mod 4) + k in its low
    /// nibble and that plus 16 in its high nibble. Shifts and masks isolate them against an
    /// `x` permuted once per call, and the two blocks' scales ride in one vector.
    ///
    /// The nibbles q stand for q − 8; the kernel multiplies q itself and starts each pair's sum
    /// at −8·Σx (lane sums made with the permutation), which saves a subtract per 8 weights:
    /// 8-15% faster decoding of q4 experts, measured through the engine (docs/PERFORMANCE.md).
    public static func gemvQ4(_ blocks: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, rows: Int, cols: Int,
                              x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let blocksPerRow = cols / Quantization.q4BlockSize
        let pairs = blocksPerRow / 2
        withUnsafeTemporaryAllocation(of: Float.self, capacity: max(permutedQ4Count(pairs: pairs), 1)) { permuted in
            permuteForQ4(x, pairs: pairs, into: permuted.baseAddress!)
            let px = UnsafeRawPointer(permuted.baseAddress!)
            let sums = px + q4SumsOffset(pairs: pairs) * MemoryLayout<Float>.stride
            for r in 0..<rows {
                let rowBlocks = UnsafeRawPointer(blocks + r * blocksPerRow * Quantization.q4BlockBytes)
                let rowScales = scales + r * blocksPerRow
                var acc = SIMD8<Float>()
                for pair in 0..<pairs {
                    let lanes = rowBlocks.loadUnaligned(fromByteOffset: pair * 32, as: SIMD8<UInt32>.self)
                    let xs = px + pair * 256
                    // Σ (q − 8)·x = Σ q·x − 8·Σ x: the offset costs one FMA per pair, not one subtract per 8 weights.
                    var block = sums.loadUnaligned(fromByteOffset: pair * 32, as: SIMD8<Float>.self) * -8
                    for k in 0..<4 {
                        let shift = UInt32(8 * k)
                        block.addProduct(nibbles(lanes, shift: shift), xs.loadUnaligned(fromByteOffset: k * 64, as: SIMD8<Float>.self))
                        block.addProduct(nibbles(lanes, shift: shift + 4), xs.loadUnaligned(fromByteOffset: k * 64 + 32, as: SIMD8<Float>.self))
                    }
                    let scale = SIMD8<Float>(lowHalf: SIMD4(repeating: rowScales[2 * pair]), highHalf: SIMD4(repeating: rowScales[2 * pair + 1]))
                    acc.addProduct(block, scale)
                }
                y[r] = withOddBlock(acc.sum(), rowBlocks, rowScales, blocksPerRow: blocksPerRow, x: x)
            }
        }
    }

    /// Permutes `x` for `gemvQ4`: `out[((pair·4 + k)·2 + half)·8 + i] = x[pair·64 + (i/4)·32 + half·16 + 4(i mod 4) + k]`,
    /// followed (at `pairs·64`) by each pair's lane sums over k and half, `sum[pair·8 + i]`, which
    /// carry the −8 offset of the nibbles.
    @inline(__always)
    static func permuteForQ4(_ x: UnsafePointer<Float>, pairs: Int, into permuted: UnsafeMutablePointer<Float>) {
        let sums = permuted + q4SumsOffset(pairs: pairs)
        for pair in 0..<pairs {
            var sum = SIMD8<Float>()
            for k in 0..<4 {
                for half in 0..<2 {
                    var lane = SIMD8<Float>()
                    for i in 0..<8 {
                        lane[i] = x[pair * 64 + (i / 4) * 32 + half * 16 + 4 * (i % 4) + k]
                    }
                    UnsafeMutableRawPointer(permuted + ((pair * 4 + k) * 2 + half) * 8).storeBytes(of: lane, as: SIMD8<Float>.self)
                    sum += lane
                }
            }
            UnsafeMutableRawPointer(sums + pair * 8).storeBytes(of: sum, as: SIMD8<Float>.self)
        }
    }

    /// Floats `permuteForQ4` writes for `pairs` block pairs: 64 permuted values and 8 lane sums per pair.
    @inline(__always)
    static func permutedQ4Count(pairs: Int) -> Int { pairs * 72 }

    /// Where in `permuteForQ4`'s output the lane sums start, in floats.
    @inline(__always)
    static func q4SumsOffset(pairs: Int) -> Int { pairs * 64 }

    /// Nibble `shift/4` of each 32-bit lane as floats in 0...15 (converted with `vcvtdq2ps`).
    @inline(__always)
    static func nibbles(_ lanes: SIMD8<UInt32>, shift: UInt32) -> SIMD8<Float> {
        SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: (lanes &>> shift) & SIMD8<UInt32>(repeating: 0x0F)))
    }

    /// `sum` plus the odd last block of a q4 row (16 lanes at a time), if the row has one.
    @inline(__always)
    static func withOddBlock(_ sum: Float, _ rowBlocks: UnsafeRawPointer, _ rowScales: UnsafePointer<Float>,
                             blocksPerRow: Int, x: UnsafePointer<Float>) -> Float {
        guard blocksPerRow % 2 == 1 else { return sum }
        let b = blocksPerRow - 1
        let (low, high) = widenQ4Block(rowBlocks + b * Quantization.q4BlockBytes)
        let xs = UnsafeRawPointer(x + b * Quantization.q4BlockSize)
        var block = low * xs.loadUnaligned(as: SIMD16<Float>.self)
        block.addProduct(high, xs.loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self))
        return sum + block.sum() * rowScales[b]
    }
}
