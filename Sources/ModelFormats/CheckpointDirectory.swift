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

    /// Opens and validates the directory: the config, the index, and every shard's header.
    public init(url: URL) throws {
        self.url = url
        let fileManager = FileManager.default
        var isDirectory: ObjCBool = false
        guard fileManager.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ModelFormatError.file(url.path, "not a directory")
        }
        config = try ModelConfig.load(from: url.appendingPathComponent("config.json"))

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
        values.withUnsafeMutableBufferPointer { Self.widen(file.bytes(of: entry), dtype: entry.dtype, into: $0.baseAddress!, count: count) }
        return values
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
        case .u8:
            // Raw bytes (MXFP4 blocks, e8m0 scales) are read by their own code, never widened;
            // as numbers they are their integer values.
            for i in 0..<count { destination[i] = Float(base.load(fromByteOffset: i, as: UInt8.self)) }
        }
    }
}
