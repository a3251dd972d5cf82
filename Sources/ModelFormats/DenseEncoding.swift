import TensorMath

/// How `pack --dense` stores a store's dense matrices: the attention projections, shared
/// experts and dense MLPs, the token embeddings and the LM head. Routers (and anything else)
/// keep the checkpoint's dtype: they are small, and routing decisions are where rounding
/// would show first.
///
/// A quantised tensor's bytes in `dense.bin` (as an expert matrix's in a blob): the scales
/// first (int8: `[rows]` f32; q4: `[rows, cols/32]` f32), then at the next 64-byte boundary the
/// values (`[rows, cols]` int8) or q4 blocks (`[rows, cols/32, 16]`).
public enum DenseEncoding: String, Codable, Sendable, CaseIterable {
    /// The checkpoint's dtype, bit for bit (bf16 for bf16 checkpoints).
    case bf16
    /// int8 with one float32 scale per row (the `int8` expert format).
    case q8
    /// 4-bit blocks of 32 with a float32 scale each (the `q4` expert format).
    case q4

    /// Name suffixes of the matrices `--dense q8|q4` quantises.
    static let quantisedSuffixes = [
        ".q_proj.weight", ".k_proj.weight", ".v_proj.weight", ".o_proj.weight",
        ".gate_proj.weight", ".up_proj.weight", ".down_proj.weight",
        "embed_tokens.weight", "lm_head.weight",
    ]

    /// The expert-format element type a quantised tensor uses, nil for `bf16`.
    public var elementType: ExpertDType? {
        switch self {
        case .bf16: return nil
        case .q8: return .int8
        case .q4: return .q4
        }
    }

    /// Whether tensor `name` of `shape` is stored quantised: a listed linear layer, 2-D, and for
    /// q4 a multiple of 32 columns (others keep their dtype).
    public func quantises(_ name: String, shape: [Int]) -> Bool {
        guard let type = elementType, shape.count == 2, shape[0] > 0, shape[1] > 0 else { return false }
        if type == .q4 && shape[1] % Quantization.q4BlockSize != 0 { return false }
        return Self.quantisedSuffixes.contains { name.hasSuffix($0) }
    }

    /// Offsets of the scales (0) and values, and the total bytes, of a `[rows, cols]` matrix of `type`.
    public static func layout(_ type: ExpertDType, rows: Int, cols: Int) -> (dataOffset: Int, length: Int) {
        switch type {
        case .int8:
            let data = ExpertBlobLayout.align(Quantization.int8ScaleBytes(rows: rows))
            return (data, data + rows * cols)
        case .q4:
            let data = ExpertBlobLayout.align(Quantization.q4ScaleBytes(rows: rows, cols: cols))
            return (data, data + Quantization.q4BlockBytes(rows: rows, cols: cols))
        case .bf16, .f32, .mxfp4, .ggml:
            preconditionFailure("dense matrices are quantised to int8 or q4 only")
        }
    }

    /// Quantises float32 `values[rows, cols]` into `out` (`layout(type, ...).length` bytes, 64-byte aligned).
    public static func encode(_ values: UnsafePointer<Float>, rows: Int, cols: Int, as type: ExpertDType, into out: UnsafeMutableRawPointer) {
        let (dataOffset, _) = layout(type, rows: rows, cols: cols)
        let scales = out.assumingMemoryBound(to: Float.self)
        switch type {
        case .int8:
            Quantization.quantizeInt8(values, rows: rows, cols: cols, values: (out + dataOffset).assumingMemoryBound(to: Int8.self), scales: scales)
        case .q4:
            Quantization.quantizeQ4(values, rows: rows, cols: cols, blocks: (out + dataOffset).assumingMemoryBound(to: UInt8.self), scales: scales)
        case .bf16, .f32, .mxfp4, .ggml:
            preconditionFailure("dense matrices are quantised to int8 or q4 only")
        }
    }

    /// The matrix over encoded bytes at `base` (kept alive by `owner`).
    public static func matrix(_ base: UnsafeRawPointer, rows: Int, cols: Int, type: ExpertDType, owner: AnyObject) -> WeightMatrix {
        let (dataOffset, _) = layout(type, rows: rows, cols: cols)
        let scales = base.assumingMemoryBound(to: Float.self)
        switch type {
        case .int8:
            return WeightMatrix(rows: rows, cols: cols, storage: .int8(values: (base + dataOffset).assumingMemoryBound(to: Int8.self), scales: scales), owner: owner)
        case .q4:
            return WeightMatrix(rows: rows, cols: cols, storage: .q4(blocks: (base + dataOffset).assumingMemoryBound(to: UInt8.self), scales: scales), owner: owner)
        case .bf16, .f32, .mxfp4, .ggml:
            preconditionFailure("dense matrices are quantised to int8 or q4 only")
        }
    }
}
