/// SIMD kernels over int8 and q4 weights: dequantise on the fly, one 16-lane vector at a time.
///
/// Integers are widened to floats with the "magic number" trick (OR the unsigned value into
/// the mantissa of 2²³ and subtract 2²³) because it needs only zero-extension, OR and a float
/// subtract, which the compiler reliably vectorises; Swift's generic integer→float SIMD
/// conversion does not always lower to `vcvtdq2ps`.
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

    /// `y[rows] = W[rows, cols] · x[cols]` with W int8 and one scale per row.
    public static func gemvInt8(_ w: UnsafePointer<Int8>, scales: UnsafePointer<Float>, rows: Int, cols: Int,
                                x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let row = w + r * cols
            var acc0 = SIMD16<Float>(), acc1 = SIMD16<Float>()
            var c = 0
            while c + 32 <= cols {
                acc0.addProduct(widenInt8(UnsafeRawPointer(row + c)), UnsafeRawPointer(x + c).loadUnaligned(as: SIMD16<Float>.self))
                acc1.addProduct(widenInt8(UnsafeRawPointer(row + c + 16)), UnsafeRawPointer(x + c + 16).loadUnaligned(as: SIMD16<Float>.self))
                c += 32
            }
            while c + 16 <= cols {
                acc0.addProduct(widenInt8(UnsafeRawPointer(row + c)), UnsafeRawPointer(x + c).loadUnaligned(as: SIMD16<Float>.self))
                c += 16
            }
            var sum = (acc0 + acc1).sum()
            while c < cols { sum += Float(row[c]) * x[c]; c += 1 }
            // The row's scale factors out of the dot product: one multiply per row.
            y[r] = sum * scales[r]
        }
    }

    /// `y[rows] = W[rows, cols] · x[cols]` with W in q4 blocks (`cols` a multiple of 32).
    public static func gemvQ4(_ blocks: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, rows: Int, cols: Int,
                              x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let blocksPerRow = cols / Quantization.q4BlockSize
        for r in 0..<rows {
            var acc = SIMD16<Float>()
            for b in 0..<blocksPerRow {
                let index = r * blocksPerRow + b
                let (low, high) = widenQ4Block(UnsafeRawPointer(blocks + index * Quantization.q4BlockBytes))
                let xs = UnsafeRawPointer(x + b * Quantization.q4BlockSize)
                var block = low * xs.loadUnaligned(as: SIMD16<Float>.self)
                block.addProduct(high, xs.loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self))
                acc.addProduct(block, SIMD16<Float>(repeating: scales[index]))
            }
            y[r] = acc.sum()
        }
    }
}
