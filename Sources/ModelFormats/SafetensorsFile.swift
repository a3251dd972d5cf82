import Foundation
import TensorMath

/// Element type of a tensor in a checkpoint.
public enum TensorDType: String, Sendable, Codable {
    case f32 = "F32", bf16 = "BF16", f16 = "F16"
    /// float8 e4m3fn, with a `weight_scale_inv` per block beside it (FP8 checkpoints: `FP8BlockScaling`).
    case f8e4m3 = "F8_E4M3"
    /// Raw bytes: MXFP4 blocks and e8m0 scales (gpt-oss), never a float tensor.
    case u8 = "U8"

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f32: return 4
        case .bf16, .f16: return 2
        case .f8e4m3, .u8: return 1
        }
    }
}

/// Where one tensor lives in a safetensors file.
public struct SafetensorsEntry: Sendable {
    /// Tensor name.
    public let name: String
    /// Element type.
    public let dtype: TensorDType
    /// Shape, outermost first.
    public let shape: [Int]
    /// Offset of the first byte from the start of the file.
    public let fileOffset: Int
    /// Length in bytes.
    public let byteCount: Int

    /// Number of elements.
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A memory-mapped `*.safetensors` file: an 8-byte little-endian header length, a JSON header
/// naming every tensor's dtype, shape and byte range, then the data.
///
/// Every range is validated against the file size when the file is opened, so a truncated or
/// damaged file fails there, with the tensor named, rather than when the tensor is read.
public final class SafetensorsFile: @unchecked Sendable {
    /// Path of the file.
    public let path: String
    /// The tensors, by name.
    public let entries: [String: SafetensorsEntry]
    private let mapping: ReadOnlyFileMapping

    /// Maps and validates the file at `path`.
    public init(path: String) throws {
        self.path = path
        mapping = try ReadOnlyFileMapping(path: path, minimumSize: 8, format: "safetensors")
        entries = try Self.parseHeader(base: mapping.base, size: mapping.count, path: path)
    }

    /// The bytes of tensor `name`.
    public func bytes(of entry: SafetensorsEntry) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: mapping.base + entry.fileOffset, count: entry.byteCount)
    }

    /// Drops the pages of `entry` from this process's resident set once its bytes have been
    /// copied out. Read through the mapping, a checkpoint's tensors otherwise stay counted in
    /// the resident set (a 4 GiB-budget run on an 11 GB checkpoint peaked at 12 GB of RSS);
    /// the kernel's page cache may keep them, reclaimable, but they are no longer ours.
    /// Pages shared with a neighbouring tensor at either end are kept.
    public func dropResidentPages(of entry: SafetensorsEntry) {
        mapping.dropResidentPages(offset: entry.fileOffset, length: entry.byteCount)
    }

    /// Parses and validates the header of a safetensors file of `size` bytes mapped at `base`.
    static func parseHeader(base: UnsafeRawPointer, size: Int, path: String) throws -> [String: SafetensorsEntry] {
        // Int(exactly:): a length of 2^63 or more is damage, not a trap.
        let headerLength = Int(exactly: UInt64(littleEndian: base.loadUnaligned(as: UInt64.self))) ?? -1
        guard headerLength > 0, headerLength <= size - 8 else {
            throw ModelFormatError.file(path, "header length \(headerLength) is out of range for a file of \(size) bytes (truncated or not safetensors)")
        }
        let headerData = Data(bytes: base + 8, count: headerLength)
        guard let header = try? JSONSerialization.jsonObject(with: headerData) as? [String: Any] else {
            throw ModelFormatError.file(path, "header is not a JSON object")
        }
        let dataStart = 8 + headerLength
        var entries: [String: SafetensorsEntry] = [:]
        for (name, value) in header where name != "__metadata__" {
            guard let info = value as? [String: Any],
                  let dtypeName = info["dtype"] as? String,
                  let shape = info["shape"] as? [Int],
                  let offsets = info["data_offsets"] as? [Int], offsets.count == 2 else {
                throw ModelFormatError.tensor(name, in: path, "malformed header entry")
            }
            guard let dtype = TensorDType(rawValue: dtypeName) else {
                throw ModelFormatError.tensor(name, in: path, "unsupported dtype \(dtypeName) (supported: F32, BF16, F16, F8_E4M3, U8)")
            }
            let (begin, end) = (offsets[0], offsets[1])
            guard begin >= 0, end >= begin, end <= size - dataStart else {
                throw ModelFormatError.tensor(name, in: path, "data range \(begin)..<\(end) lies outside the file (\(size - dataStart) data bytes; truncated?)")
            }
            // Checked products: a header claiming an absurd shape is refused, not a crash.
            let expected = shape.reduce(Optional(dtype.size)) { product, dim in
                guard let product, dim >= 0 else { return nil }
                let (p, overflow) = product.multipliedReportingOverflow(by: dim)
                return overflow ? nil : p
            }
            guard let expected, expected == end - begin else {
                let needs = expected.map { "\($0) bytes" } ?? "an impossible number of bytes"
                throw ModelFormatError.tensor(name, in: path, "shape \(shape) of \(dtypeName) needs \(needs) but the header gives \(end - begin)")
            }
            entries[name] = SafetensorsEntry(name: name, dtype: dtype, shape: shape, fileOffset: dataStart + begin, byteCount: end - begin)
        }
        return entries
    }
}
