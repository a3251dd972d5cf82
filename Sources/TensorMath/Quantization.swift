/// Symmetric integer quantisation of weight matrices, as stored in an expert store.
///
/// - int8: one float32 scale per row, `w ≈ q · scale` with `q ∈ [-127, 127]` and
///   `scale = max|w_row| / 127`. Worst-case error per element: `max|w_row| / 254`.
/// - q4: blocks of 32 consecutive weights of a row, one float32 scale per block,
///   `w ≈ (nibble − 8) · scale` with `nibble − 8 ∈ [-7, 7]` and `scale = max|w_block| / 7`.
///   Worst-case error per element: `max|w_block| / 14`.
///
/// q4 block layout (16 bytes per block, as ggml's Q4_0): byte `j` holds element `j` in its low
/// nibble and element `j + 16` in its high nibble, so the two halves of a block widen into two
/// contiguous 16-lane vectors that line up with contiguous slices of `x`.
public enum Quantization {
    /// Weights per q4 block.
    public static let q4BlockSize = 32
    /// Bytes per q4 block (two weights per byte).
    public static let q4BlockBytes = 16

    /// Quantises `w[rows, cols]` to int8 `values[rows, cols]` with per-row `scales[rows]`.
    public static func quantizeInt8(_ w: UnsafePointer<Float>, rows: Int, cols: Int,
                                    values: UnsafeMutablePointer<Int8>, scales: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let row = w + r * cols
            var maximum: Float = 0
            for c in 0..<cols { maximum = max(maximum, abs(row[c])) }
            let scale = maximum / 127
            scales[r] = scale
            let inverse: Float = scale > 0 ? 1 / scale : 0
            for c in 0..<cols {
                let q = (row[c] * inverse).rounded(.toNearestOrEven)
                values[r * cols + c] = Int8(max(-127, min(127, q)))
            }
        }
    }

    /// Quantises `w[rows, cols]` to q4 blocks `[rows, cols/32, 16]` with scales `[rows, cols/32]`.
    /// `cols` must be a multiple of 32.
    public static func quantizeQ4(_ w: UnsafePointer<Float>, rows: Int, cols: Int,
                                  blocks: UnsafeMutablePointer<UInt8>, scales: UnsafeMutablePointer<Float>) {
        precondition(cols % q4BlockSize == 0, "q4 needs a multiple of \(q4BlockSize) columns, got \(cols)")
        let blocksPerRow = cols / q4BlockSize
        for r in 0..<rows {
            for b in 0..<blocksPerRow {
                let source = w + r * cols + b * q4BlockSize
                var maximum: Float = 0
                for i in 0..<q4BlockSize { maximum = max(maximum, abs(source[i])) }
                let scale = maximum / 7
                scales[r * blocksPerRow + b] = scale
                let inverse: Float = scale > 0 ? 1 / scale : 0
                func nibble(_ value: Float) -> UInt8 {
                    let q = max(-7, min(7, (value * inverse).rounded(.toNearestOrEven)))
                    return UInt8(Int(q) + 8)
                }
                let destination = blocks + (r * blocksPerRow + b) * q4BlockBytes
                for j in 0..<q4BlockBytes {
                    destination[j] = nibble(source[j]) | (nibble(source[j + 16]) << 4)
                }
            }
        }
    }

    /// Widens int8 `values[rows, cols]` with per-row `scales` to float32 `out[rows, cols]`.
    public static func dequantizeInt8(_ values: UnsafePointer<Int8>, scales: UnsafePointer<Float>, rows: Int, cols: Int,
                                      into out: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let scale = scales[r]
            let source = values + r * cols, destination = out + r * cols
            var c = 0
            while c + 16 <= cols {
                let wide = QuantizedKernels.widenInt8(UnsafeRawPointer(source + c)) * scale
                UnsafeMutableRawPointer(destination + c).storeBytes(of: wide, as: SIMD16<Float>.self)
                c += 16
            }
            while c < cols { destination[c] = Float(source[c]) * scale; c += 1 }
        }
    }

    /// Widens q4 `blocks` with their `scales` to float32 `out[rows, cols]`.
    public static func dequantizeQ4(_ blocks: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, rows: Int, cols: Int,
                                    into out: UnsafeMutablePointer<Float>) {
        let blockCount = rows * (cols / q4BlockSize)
        for b in 0..<blockCount {
            let (low, high) = QuantizedKernels.widenQ4Block(UnsafeRawPointer(blocks + b * q4BlockBytes))
            let scale = scales[b]
            let destination = UnsafeMutableRawPointer(out + b * q4BlockSize)
            destination.storeBytes(of: low * scale, as: SIMD16<Float>.self)
            destination.storeBytes(of: high * scale, toByteOffset: 64, as: SIMD16<Float>.self)
        }
    }

    /// Bytes of the scales of an int8 matrix with `rows` rows.
    public static func int8ScaleBytes(rows: Int) -> Int { rows * 4 }

    /// Bytes of the scales of a q4 matrix `[rows, cols]`.
    public static func q4ScaleBytes(rows: Int, cols: Int) -> Int { rows * (cols / q4BlockSize) * 4 }

    /// Bytes of the packed nibbles of a q4 matrix `[rows, cols]`.
    public static func q4BlockBytes(rows: Int, cols: Int) -> Int { rows * (cols / q4BlockSize) * q4BlockBytes }
}
