import Foundation
import TensorMath

/// A Hugging Face model directory: `config.json`, and either `model.safetensors` or shards
/// `model-0000N-of-0000M.safetensors` listed in `model.safetensors.index.json`.
///
/// Tensors are copied out of the memory-mapped shards into aligned buffers when asked for, so
/// what stays resident is exactly what the model asked for.
public final class CheckpointDirectory: WeightSource, @unchecked Sendable {
    /// The directory.
    public let url: URL
    /// Its parsed config.json.
    public let config: ModelConfig
    /// Which file holds each tensor.
    private let fileForTensor: [String: SafetensorsFile]
    /// Block scaling of float8 weights (`quantization_config.quant_method: "fp8"`), nil otherwise.
    public let fp8Scaling: FP8BlockScaling?

    /// Opens and validates the directory: the config, the index, and every shard's header.
    public init(url: URL) throws {
        self.url = url
        let fileManager = FileManager.default
        var isDirectory: ObjCBool = false
        guard fileManager.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ModelFormatError.file(url.path, "not a directory")
        }
        config = try ModelConfig.load(from: url.appendingPathComponent("config.json"))
        fp8Scaling = try FP8BlockScaling.read(configAt: url.appendingPathComponent("config.json"))

        let indexURL = url.appendingPathComponent("model.safetensors.index.json")
        let singleURL = url.appendingPathComponent("model.safetensors")
        var files: [String: SafetensorsFile] = [:]
        var map: [String: SafetensorsFile] = [:]
        if fileManager.fileExists(atPath: indexURL.path) {
            guard let data = try? Data(contentsOf: indexURL),
                  let index = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
                  let weightMap = index["weight_map"] as? [String: String] else {
                throw ModelFormatError.file(indexURL.path, "malformed index: expected an object with a 'weight_map'")
            }
            for (tensor, shardName) in weightMap.sorted(by: { $0.key < $1.key }) {
                let shard: SafetensorsFile
                if let open = files[shardName] { shard = open } else {
                    let shardURL = url.appendingPathComponent(shardName)
                    guard fileManager.fileExists(atPath: shardURL.path) else {
                        throw ModelFormatError.file(shardURL.path, "missing shard (listed in model.safetensors.index.json for tensor '\(tensor)')")
                    }
                    shard = try SafetensorsFile(path: shardURL.path)
                    files[shardName] = shard
                }
                guard shard.entries[tensor] != nil else {
                    throw ModelFormatError.tensor(tensor, in: shard.path, "listed in the index but not present in the shard")
                }
                map[tensor] = shard
            }
        } else if fileManager.fileExists(atPath: singleURL.path) {
            let file = try SafetensorsFile(path: singleURL.path)
            for name in file.entries.keys { map[name] = file }
        } else {
            throw ModelFormatError.file(url.path, "no model.safetensors or model.safetensors.index.json")
        }
        fileForTensor = map
    }

    /// All tensor names, sorted.
    public var tensorNames: [String] { fileForTensor.keys.sorted() }

    /// The header entry and file of tensor `name`.
    public func entry(_ name: String) throws -> (SafetensorsEntry, SafetensorsFile) {
        guard let file = fileForTensor[name], let entry = file.entries[name] else {
            throw ModelFormatError.tensor(name, in: url.path, "missing from the checkpoint")
        }
        return (entry, file)
    }

    public func contains(_ name: String) -> Bool { fileForTensor[name] != nil }

    public func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
        let (entry, file) = try entry(name)
        guard entry.shape == [rows, cols] else {
            throw ModelFormatError.tensor(name, in: file.path, "shape \(entry.shape) does not match the config's [\(rows), \(cols)]")
        }
        let bytes = file.bytes(of: entry)
        // The copy below is what the model keeps; the mapped pages leave the resident set.
        defer { file.dropResidentPages(of: entry) }
        switch entry.dtype {
        case .bf16:
            let buffer = AlignedBuffer<UInt16>(count: rows * cols)
            UnsafeMutableRawPointer(buffer.pointer).copyMemory(from: bytes.baseAddress!, byteCount: entry.byteCount)
            return WeightMatrix(rows: rows, cols: cols, storage: .bf16(UnsafePointer(buffer.pointer)), owner: buffer)
        case .f8e4m3:
            // Dequantized per block, kept as bf16 (what transformers loads an FP8 checkpoint as).
            let widened = AlignedBuffer<Float>(count: rows * cols)
            try dequantize(name, into: widened.pointer)
            let buffer = AlignedBuffer<UInt16>(count: rows * cols)
            for i in 0..<(rows * cols) { buffer.pointer[i] = FloatConversion.bf16(from: widened.pointer[i]) }
            return WeightMatrix(rows: rows, cols: cols, storage: .bf16(UnsafePointer(buffer.pointer)), owner: buffer)
        case .f32, .f16:
            let buffer = AlignedBuffer<Float>(count: rows * cols)
            Self.widen(bytes, dtype: entry.dtype, into: buffer.pointer, count: rows * cols)
            return WeightMatrix(rows: rows, cols: cols, storage: .f32(UnsafePointer(buffer.pointer)), owner: buffer)
        case .u8:
            throw ModelFormatError.tensor(name, in: file.path, "U8 tensor cannot be used as a float matrix")
        }
    }

    public func vector(_ name: String, count: Int) throws -> [Float] {
        let (entry, file) = try entry(name)
        guard entry.dtype != .u8 else { throw ModelFormatError.tensor(name, in: file.path, "U8 tensor cannot be used as float values") }
        guard entry.elementCount == count else {
            throw ModelFormatError.tensor(name, in: file.path, "shape \(entry.shape) does not match the config's \(count) elements")
        }
        var values = [Float](repeating: 0, count: count)
        if entry.dtype == .f8e4m3 {
            try values.withUnsafeMutableBufferPointer { try dequantize(name, into: $0.baseAddress!) }
            return values
        }
        values.withUnsafeMutableBufferPointer { Self.widen(file.bytes(of: entry), dtype: entry.dtype, into: $0.baseAddress!, count: count) }
        return values
    }

    /// Whether `name` belongs to a layer past `num_hidden_layers` (DeepSeek-V3's multi-token
    /// prediction layer `model.layers.61.*`, which transformers skips on load): never used,
    /// never packed, never counted.
    public func isBeyondLastLayer(_ name: String) -> Bool {
        let prefix = "model.layers."
        guard name.hasPrefix(prefix) else { return false }
        let index = name.dropFirst(prefix.count).prefix { $0.isNumber }
        return Int(index).map { $0 >= config.layerCount } ?? false
    }

    /// Whether `name` is the block scale of a float8 tensor (`X_scale_inv` beside float8 `X`),
    /// folded into `X` when it is read and never a tensor of its own.
    public func isFP8Scale(_ name: String) -> Bool {
        guard name.hasSuffix(FP8BlockScaling.scaleSuffix) else { return false }
        let base = String(name.dropLast(FP8BlockScaling.scaleSuffix.count))
        return (try? entry(base).0.dtype) == .f8e4m3
    }

    /// Float8 tensor `name` (2-D) dequantized into `destination`: each element times its block's
    /// `name_scale_inv` (transformers' fine-grained FP8: `weight * weight_scale_inv`, per block).
    public func dequantize(_ name: String, into destination: UnsafeMutablePointer<Float>) throws {
        let (entry, file) = try entry(name)
        guard let scaling = fp8Scaling else {
            throw ModelFormatError.tensor(name, in: file.path, "float8 weights need quantization_config.quant_method \"fp8\" in config.json")
        }
        guard entry.shape.count == 2 else {
            throw ModelFormatError.tensor(name, in: file.path, "float8 tensor of shape \(entry.shape): only 2-D weights are block-scaled")
        }
        let scaleName = name + FP8BlockScaling.scaleSuffix
        let (scaleEntry, scaleFile) = try self.entry(scaleName)
        let expected = scaling.scaleShape(rows: entry.shape[0], cols: entry.shape[1])
        guard scaleEntry.shape == expected || scaleEntry.elementCount == expected.reduce(1, *) else {
            throw ModelFormatError.tensor(scaleName, in: scaleFile.path, "shape \(scaleEntry.shape), expected \(expected) for blocks of \(scaling.blockRows)x\(scaling.blockCols) over \(entry.shape)")
        }
        var scales = [Float](repeating: 0, count: scaleEntry.elementCount)
        scales.withUnsafeMutableBufferPointer {
            Self.widen(scaleFile.bytes(of: scaleEntry), dtype: scaleEntry.dtype, into: $0.baseAddress!, count: $0.count)
        }
        scaling.dequantize(file.bytes(of: entry), rows: entry.shape[0], cols: entry.shape[1], scales: scales, into: destination)
        file.dropResidentPages(of: entry)
    }

    /// Converts `count` elements of `dtype` from `bytes` to float32.
    static func widen(_ bytes: UnsafeRawBufferPointer, dtype: TensorDType, into destination: UnsafeMutablePointer<Float>, count: Int) {
        guard count > 0, let base = bytes.baseAddress else { return }
        switch dtype {
        case .f32:
            UnsafeMutableRawPointer(destination).copyMemory(from: base, byteCount: count * 4)
        case .bf16:
            // The mapping is only 2-byte aligned in general: copy to aligned storage first.
            let aligned = AlignedBuffer<UInt16>(count: count)
            UnsafeMutableRawPointer(aligned.pointer).copyMemory(from: base, byteCount: count * 2)
            FloatConversion.convertBF16(aligned.pointer, to: destination, count: count)
        case .f16:
            let aligned = AlignedBuffer<UInt16>(count: count)
            UnsafeMutableRawPointer(aligned.pointer).copyMemory(from: base, byteCount: count * 2)
            FloatConversion.convertF16(aligned.pointer, to: destination, count: count)
        case .f8e4m3:
            // Unscaled values; `dequantize(_:into:)` applies the block scales.
            let bytes = base.assumingMemoryBound(to: UInt8.self)
            for i in 0..<count { destination[i] = FP8BlockScaling.e4m3[Int(bytes[i])] }
        case .u8:
            // Raw bytes (MXFP4 blocks, e8m0 scales) are read by their own code, never widened;
            // as numbers they are their integer values.
            for i in 0..<count { destination[i] = Float(base.load(fromByteOffset: i, as: UInt8.self)) }
        }
    }
}
