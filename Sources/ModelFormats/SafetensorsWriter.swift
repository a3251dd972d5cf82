import Foundation
import TensorMath

/// Builds a `*.safetensors` file in memory and writes it: tiny checkpoints for tests and
/// tools. Tensors are laid out in the order they were added, each 8-byte aligned as the
/// reference implementation does.
public struct SafetensorsWriter {
    private struct Pending {
        let name: String
        let dtype: TensorDType
        let shape: [Int]
        let bytes: [UInt8]
    }
    private var tensors: [Pending] = []

    /// An empty file.
    public init() {}

    /// Adds tensor `name` of `shape` from raw little-endian `bytes` of `dtype`.
    public mutating func add(_ name: String, dtype: TensorDType, shape: [Int], bytes: [UInt8]) {
        precondition(bytes.count == shape.reduce(1, *) * dtype.size, "\(name): \(bytes.count) bytes do not fit shape \(shape) of \(dtype)")
        tensors.append(Pending(name: name, dtype: dtype, shape: shape, bytes: bytes))
    }

    /// Adds tensor `name` of `shape` from float32 `values`, stored as `dtype` (f32 or bf16;
    /// bf16 rounds to nearest even, as PyTorch does).
    public mutating func add(_ name: String, shape: [Int], values: [Float], dtype: TensorDType = .f32) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(values.count * dtype.size)
        switch dtype {
        case .f32:
            for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes.append(contentsOf: $0) } }
        case .bf16:
            for v in values { withUnsafeBytes(of: FloatConversion.bf16(from: v).littleEndian) { bytes.append(contentsOf: $0) } }
        case .f16, .f8e4m3, .u8:
            preconditionFailure("SafetensorsWriter: writing \(dtype.rawValue) from floats is not supported")
        }
        add(name, dtype: dtype, shape: shape, bytes: bytes)
    }

    /// The complete file: header length, JSON header, data.
    public func serialized() throws -> Data {
        var header: [String: Any] = [:]
        var offset = 0
        for tensor in tensors {
            header[tensor.name] = ["dtype": tensor.dtype.rawValue, "shape": tensor.shape, "data_offsets": [offset, offset + tensor.bytes.count]]
            offset += tensor.bytes.count
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        // Pad the header with spaces so the data starts 8-byte aligned.
        while (json.count + 8) % 8 != 0 { json.append(0x20) }
        var data = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { data.append(contentsOf: $0) }
        data.append(json)
        for tensor in tensors { data.append(contentsOf: tensor.bytes) }
        return data
    }

    /// Writes the file to `url`.
    public func write(to url: URL) throws {
        do { try serialized().write(to: url) } catch {
            throw ModelFormatError.file(url.path, "cannot write: \(error.localizedDescription)")
        }
    }
}
