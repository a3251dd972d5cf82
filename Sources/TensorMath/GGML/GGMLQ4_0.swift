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
/// The q4 form takes 20 bytes per block against Q4_0's 18 (float32 scales); converted once at
/// load (dense weights, experts read from a GGUF file) or at `pack` time (experts in a store).
public enum GGMLQ4_0 {
    /// Bytes of one `block_q4_0`.
    public static let blockBytes = 18

    /// Whether Q4_0 matrices are converted to q4 (the default). `MOE_GGUF_Q4_0=ggml` keeps
    /// them as ggml blocks on the float kernels (for side-by-side measurements).
    public static let convertsToQ4: Bool = ProcessInfo.processInfo.environment["MOE_GGUF_Q4_0"] != "ggml"

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
    /// in a buffer of its own laid out as `blocksOffset` says. `cols` must be a multiple of 32.
    public static func matrix(_ source: UnsafeRawPointer, rows: Int, cols: Int) -> WeightMatrix {
        precondition(cols % Quantization.q4BlockSize == 0, "Q4_0 needs a multiple of 32 columns, got \(cols)")
        let buffer = AlignedBuffer<UInt8>(count: max(1, convertedByteCount(rows: rows, cols: cols)), zeroed: false)
        let scales = UnsafeMutableRawPointer(buffer.pointer).bindMemory(to: Float.self, capacity: rows * (cols / 32))
        let blocks = buffer.pointer + blocksOffset(rows: rows, cols: cols)
        let scaleBytes = Quantization.q4ScaleBytes(rows: rows, cols: cols)
        (buffer.pointer + scaleBytes).update(repeating: 0, count: blocksOffset(rows: rows, cols: cols) - scaleBytes) // padding: reproducible stores
        split(source, blockCount: rows * (cols / Quantization.q4BlockSize), blocks: blocks, scales: scales)
        return WeightMatrix(rows: rows, cols: cols, storage: .q4(blocks: UnsafePointer(blocks), scales: UnsafePointer(scales)), owner: buffer)
    }
}
