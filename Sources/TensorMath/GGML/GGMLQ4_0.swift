import Foundation

/// llama.cpp's Q4_0 blocks as MoEServe's q4 layout, so GGUF Q4_0 matrices run on the
/// integer-dot q4 kernels (`IntegerDotKernels`, issue 22) instead of the float dequantising
/// `GGMLKernels`.
///
/// A `block_q4_0` is 18 bytes per 32 weights: a float16 scale `d`, then 16 bytes whose byte `j`
/// holds weight `j` in its low nibble and weight `j + 16` in its high one, `w = (nibble − 8) · d`.
/// That is exactly the q4 nibble order and formula (`Quantization`), with the scales kept
/// apart: q4's blocks `[rows, cols/32, 16]` and float32 scales `[rows, cols/32]`. So the
/// conversion copies the nibble bytes and widens each `d` to float32 (exact), and every weight
/// keeps its value bit for bit, nibble 0 (−8, which our own quantiser never writes) included.
///
/// Served from a GGUF file, the scales stay float16 (`WeightStorage.q4f16`: 18 bytes a block, as
/// in the file, on `moe_gemm_q4h_q8`; issue 22: a decode token reads 10% fewer bytes than with
/// float32 scales). The float32 form (`WeightStorage.q4`, 20 bytes a block) is what a store's q4
/// holds: `pack FILE.gguf` widens to it (`floatScales`), and `MOE_GGUF_Q4_0=q4` serves it.
public enum GGMLQ4_0 {
    /// Bytes of one `block_q4_0`.
    public static let blockBytes = 18

    /// Whether Q4_0 matrices are converted to q4 (the default). `MOE_GGUF_Q4_0=ggml` keeps
    /// them as ggml blocks on the float kernels (for side-by-side measurements).
    public static let convertsToQ4: Bool = ProcessInfo.processInfo.environment["MOE_GGUF_Q4_0"] != "ggml"

    /// Whether converted matrices keep float16 scales (`WeightStorage.q4f16`, the default with the
    /// integer-dot kernels). `MOE_GGUF_Q4_0=q4` widens them to float32 (`WeightStorage.q4`, the
    /// layout before issue 22's float16 kernels; for side-by-side measurements); so does
    /// `MOE_KERNELS=float`, whose float paths read float32 scales.
    public static let keepsHalfScales: Bool =
        ProcessInfo.processInfo.environment["MOE_GGUF_Q4_0"] != "q4" && IntegerDotKernels.level != nil

    /// Offset of the blocks in a converted buffer with float16 scales: after the scales, on a
    /// 64-byte boundary.
    public static func halfBlocksOffset(rows: Int, cols: Int) -> Int {
        (rows * (cols / Quantization.q4BlockSize) * 2 + 63) / 64 * 64
    }

    /// Bytes a `[rows, cols]` Q4_0 matrix takes once loaded: float16 scales (padded) and blocks
    /// when `keepsHalfScales`, else `convertedByteCount`.
    public static func residentByteCount(rows: Int, cols: Int) -> Int {
        keepsHalfScales ? halfBlocksOffset(rows: rows, cols: cols) + Quantization.q4BlockBytes(rows: rows, cols: cols)
            : convertedByteCount(rows: rows, cols: cols)
    }

    /// Offset of the blocks in a converted buffer: after the scales, on a 64-byte boundary
    /// (the layout of a q4 tensor in a store's `dense.bin`, `DenseEncoding`).
    public static func blocksOffset(rows: Int, cols: Int) -> Int {
        (Quantization.q4ScaleBytes(rows: rows, cols: cols) + 63) / 64 * 64
    }

    /// Bytes of a converted `[rows, cols]` matrix: scales, padding, blocks.
    public static func convertedByteCount(rows: Int, cols: Int) -> Int {
        blocksOffset(rows: rows, cols: cols) + Quantization.q4BlockBytes(rows: rows, cols: cols)
    }

    /// Splits `blockCount` Q4_0 blocks at `source` into q4 `blocks` (16 bytes each) and float32
    /// `scales` (one each). The destination must not overlap the source.
    public static func split(_ source: UnsafeRawPointer, blockCount: Int,
                             blocks: UnsafeMutablePointer<UInt8>, scales: UnsafeMutablePointer<Float>) {
        let out = UnsafeMutableRawPointer(blocks)
        for b in 0..<blockCount {
            let block = source + b * blockBytes
            scales[b] = FloatConversion.float(fromF16: block.loadUnaligned(as: UInt16.self))
            out.storeBytes(of: block.loadUnaligned(fromByteOffset: 2, as: SIMD16<UInt8>.self), toByteOffset: b * 16, as: SIMD16<UInt8>.self)
        }
    }

    /// Joins q4 `blocks` and `scales` back into `blockCount` Q4_0 blocks at `out`; exact when
    /// every scale is a float16 value (as `split` makes them), else each scale is rounded to
    /// float16 (to nearest).
    public static func join(blocks: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, blockCount: Int, into out: UnsafeMutableRawPointer) {
        for b in 0..<blockCount {
            out.storeBytes(of: Float16(scales[b]).bitPattern, toByteOffset: b * blockBytes, as: UInt16.self)
            (out + b * blockBytes + 2).copyMemory(from: blocks + b * 16, byteCount: 16)
        }
    }

    /// A q4 matrix `[rows, cols]` holding the Q4_0 blocks at `source` (`rows · cols/32` of them),
    /// in a buffer of its own: `WeightStorage.q4f16` (scales as the file has them, then the blocks
    /// at `halfBlocksOffset`) when `halfScales`, else `WeightStorage.q4` laid out as `blocksOffset`
    /// says. `cols` must be a multiple of 32.
    public static func matrix(_ source: UnsafeRawPointer, rows: Int, cols: Int, halfScales: Bool = keepsHalfScales) -> WeightMatrix {
        precondition(cols % Quantization.q4BlockSize == 0, "Q4_0 needs a multiple of 32 columns, got \(cols)")
        if halfScales {
            let count = rows * (cols / Quantization.q4BlockSize), offset = halfBlocksOffset(rows: rows, cols: cols)
            let buffer = AlignedBuffer<UInt8>(count: max(1, offset + Quantization.q4BlockBytes(rows: rows, cols: cols)), zeroed: false)
            let scales = UnsafeMutableRawPointer(buffer.pointer).bindMemory(to: UInt16.self, capacity: count)
            let blocks = buffer.pointer + offset
            let out = UnsafeMutableRawPointer(blocks)
            for b in 0..<count {
                let block = source + b * blockBytes
                scales[b] = block.loadUnaligned(as: UInt16.self)
                out.storeBytes(of: block.loadUnaligned(fromByteOffset: 2, as: SIMD16<UInt8>.self), toByteOffset: b * 16, as: SIMD16<UInt8>.self)
            }
            return WeightMatrix(rows: rows, cols: cols, storage: .q4f16(blocks: UnsafePointer(blocks), scales: UnsafePointer(scales)), owner: buffer)
        }
        let buffer = AlignedBuffer<UInt8>(count: max(1, convertedByteCount(rows: rows, cols: cols)), zeroed: false)
        let scales = UnsafeMutableRawPointer(buffer.pointer).bindMemory(to: Float.self, capacity: rows * (cols / 32))
        let blocks = buffer.pointer + blocksOffset(rows: rows, cols: cols)
        let scaleBytes = Quantization.q4ScaleBytes(rows: rows, cols: cols)
        (buffer.pointer + scaleBytes).update(repeating: 0, count: blocksOffset(rows: rows, cols: cols) - scaleBytes) // padding: reproducible stores
        split(source, blockCount: rows * (cols / Quantization.q4BlockSize), blocks: blocks, scales: scales)
        return WeightMatrix(rows: rows, cols: cols, storage: .q4(blocks: UnsafePointer(blocks), scales: UnsafePointer(scales)), owner: buffer)
    }

    /// `matrix` with float32 block scales: a `q4f16` matrix widened (exactly) into a `q4` one in a
    /// buffer of its own, laid out as `blocksOffset` says (a store's q4 layout); any other as it is.
    public static func floatScales(_ matrix: WeightMatrix) -> WeightMatrix {
        guard case .q4f16(let blocks, let halves) = matrix.storage else { return matrix }
        let (rows, cols) = (matrix.rows, matrix.cols)
        let count = rows * (cols / Quantization.q4BlockSize)
        let buffer = AlignedBuffer<UInt8>(count: max(1, convertedByteCount(rows: rows, cols: cols)), zeroed: false)
        let scales = UnsafeMutableRawPointer(buffer.pointer).bindMemory(to: Float.self, capacity: count)
        let out = buffer.pointer + blocksOffset(rows: rows, cols: cols)
        let scaleBytes = Quantization.q4ScaleBytes(rows: rows, cols: cols)
        (buffer.pointer + scaleBytes).update(repeating: 0, count: blocksOffset(rows: rows, cols: cols) - scaleBytes)
        withExtendedLifetime(matrix) {
            FloatConversion.convertF16(halves, to: scales, count: count)
            out.update(from: blocks, count: Quantization.q4BlockBytes(rows: rows, cols: cols))
        }
        return WeightMatrix(rows: rows, cols: cols, storage: .q4(blocks: UnsafePointer(out), scales: UnsafePointer(scales)), owner: buffer)
    }
}
