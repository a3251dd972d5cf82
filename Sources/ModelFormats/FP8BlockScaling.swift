import Foundation

/// Fine-grained FP8 checkpoints (DeepSeek-V3 / R1 / V3.1, Kimi-K2): 2-D weights stored as
/// float8 e4m3fn with a float32 `weight_scale_inv` per `blockRows x blockCols` block
/// (`quantization_config: {"quant_method": "fp8", "weight_block_size": [128, 128]}`); the real
/// weight is `fp8 value x scale` of its block. Read by `CheckpointDirectory`, which hands the
/// dequantized weights to the model and to `pack`.
public struct FP8BlockScaling: Sendable, Equatable {
    /// Rows of one scaled block.
    public var blockRows: Int
    /// Columns of one scaled block.
    public var blockCols: Int

    /// The scale of tensor `X` is tensor `X` + this suffix.
    public static let scaleSuffix = "_scale_inv"

    public init(blockRows: Int = 128, blockCols: Int = 128) {
        self.blockRows = blockRows
        self.blockCols = blockCols
    }

    /// The block scaling config.json declares, nil without a `quantization_config` or for MXFP4;
    /// other quantization methods are refused by name.
    static func read(configAt url: URL) throws -> FP8BlockScaling? {
        guard let data = try? Data(contentsOf: url), let json = try? JSONDecoder().decode(JSONValue.self, from: data),
              let quantization = json["quantization_config"]?.objectValue else { return nil }
        let method = quantization["quant_method"]?.stringValue ?? "none"
        // MXFP4 (gpt-oss) keeps its experts as `_blocks`/`_scales`, read by `FusedExpertReader`.
        if method == "mxfp4" { return nil }
        guard method == "fp8" else {
            throw ModelFormatError.file(url.path, "unsupported quantization_config.quant_method '\(method)' (supported: fp8, mxfp4)")
        }
        if let format = quantization["fmt"]?.stringValue, format != "e4m3" {
            throw ModelFormatError.file(url.path, "unsupported fp8 format '\(format)' (supported: e4m3)")
        }
        guard let block = quantization["weight_block_size"]?.arrayValue?.compactMap(\.intValue) else { return FP8BlockScaling() }
        guard block.count == 2, block[0] > 0, block[1] > 0 else {
            throw ModelFormatError.file(url.path, "quantization_config.weight_block_size must be two positive integers, got \(block)")
        }
        return FP8BlockScaling(blockRows: block[0], blockCols: block[1])
    }

    /// Shape of the scale tensor of a `[rows, cols]` weight: one per block, partial blocks included.
    public func scaleShape(rows: Int, cols: Int) -> [Int] {
        [(rows + blockRows - 1) / blockRows, (cols + blockCols - 1) / blockCols]
    }

    /// `destination[rows, cols] = e4m3(bytes) x scales[block]`, `scales` row-major `scaleShape`.
    public func dequantize(_ bytes: UnsafeRawBufferPointer, rows: Int, cols: Int, scales: [Float],
                           into destination: UnsafeMutablePointer<Float>) {
        let values = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let scaleCols = (cols + blockCols - 1) / blockCols
        for r in 0..<rows {
            let scaleRow = (r / blockRows) * scaleCols
            for c in 0..<cols {
                destination[r * cols + c] = Self.e4m3[Int(values[r * cols + c])] * scales[scaleRow + c / blockCols]
            }
        }
    }

    /// float8 e4m3fn (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities,
    /// `S.1111.111` is NaN) → float32, for every byte.
    public static let e4m3: [Float] = (0..<256).map { byte in
        let sign: Float = byte & 0x80 != 0 ? -1 : 1
        let exponent = (byte >> 3) & 0xF, mantissa = byte & 0x7
        if exponent == 0xF && mantissa == 0x7 { return .nan }
        if exponent == 0 { return sign * Float(mantissa) / 8 * Float(sign: .plus, exponent: -6, significand: 1) }
        return sign * (1 + Float(mantissa) / 8) * Float(sign: .plus, exponent: exponent - 7, significand: 1)
    }
}
