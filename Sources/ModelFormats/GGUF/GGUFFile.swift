import Foundation
import TensorMath

/// Where one tensor lives in a GGUF file.
public struct GGUFTensorInfo: Sendable, Equatable {
    /// llama.cpp's tensor name (`blk.0.ffn_gate_exps.weight`).
    public let name: String
    /// Dimensions in ggml order: `dims[0]` is the innermost (contiguous) one, so a PyTorch
    /// weight `[rows, cols]` is `[cols, rows]` here and stacked experts `[cols, rows, experts]`.
    public let dims: [Int]
    /// Element type.
    public let type: GGMLType
    /// Offset of the first byte from the start of the file.
    public let fileOffset: Int
    /// Length in bytes.
    public let byteCount: Int

    /// Number of elements.
    public var elementCount: Int { dims.reduce(1, *) }
}

/// A memory-mapped GGUF file (version 2 or 3, little-endian): magic `GGUF`, version, tensor
/// and metadata counts, metadata key/value pairs, tensor infos, then the tensor data starting
/// at the next multiple of `general.alignment` (32 by default).
///
/// Everything the header claims is checked while parsing, against the bytes actually there
/// and against fixed limits, so a damaged or hostile file fails with one line naming the
/// problem (and the tensor, where there is one) instead of trapping or allocating without
/// bound.
public final class GGUFFile: @unchecked Sendable {
    /// Path of the file.
    public let path: String
    /// The parsed header.
    public let header: Header
    private let mapping: ReadOnlyFileMapping

    /// Everything before the tensor data.
    public struct Header: Sendable {
        /// Format version (2 or 3).
        public var version: Int
        /// Metadata in file order.
        public var metadata: [(key: String, value: GGUFValue)]
        /// Metadata by key.
        public var values: [String: GGUFValue]
        /// Tensor infos in file order, offsets resolved to file offsets.
        public var tensors: [GGUFTensorInfo]
        /// Data alignment.
        public var alignment: Int
        /// Offset of the data section.
        public var dataOffset: Int
    }

    /// Limits on what a header may claim (far above any real model, far below a trap).
    public enum Limits {
        public static let tensors = 1 << 20
        public static let metadata = 1 << 20
        public static let stringBytes = 1 << 28
        public static let arrayDepth = 4
        public static let dimensions = 4
    }

    /// Maps and parses the file at `path`.
    public init(path: String) throws {
        self.path = path
        mapping = try ReadOnlyFileMapping(path: path, minimumSize: 24, format: "GGUF")
        header = try Self.parse(mapping.bytes, path: path)
    }

    /// Metadata value `key`, nil when absent.
    public subscript(key: String) -> GGUFValue? { header.values[key] }

    /// The bytes of `tensor`.
    public func bytes(of tensor: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: mapping.base + tensor.fileOffset, count: tensor.byteCount)
    }

    /// Drops the mapped pages of `[offset, offset + length)` from the resident set after they
    /// were copied out (pages shared with a neighbour at either end are kept).
    public func dropResidentPages(offset: Int, length: Int) {
        mapping.dropResidentPages(offset: offset, length: length)
    }

    /// Whether the file at `path` starts with the GGUF magic.
    public static func isGGUF(at path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        return (try? handle.read(upToCount: 4)) == Data("GGUF".utf8)
    }

    /// Parses the header of a GGUF file held in `bytes` (`path` names it in errors).
    public static func parse(_ bytes: UnsafeRawBufferPointer, path: String) throws -> Header {
        var reader = Reader(bytes: bytes, path: path)
        guard try reader.u32() == 0x4655_4747 else { throw ModelFormatError.file(path, "not a GGUF file (bad magic)") }
        let version = try reader.u32()
        guard version == 2 || version == 3 else {
            let hint = version.byteSwapped == 2 || version.byteSwapped == 3 ? " (a big-endian file; only little-endian GGUF is supported)" : ""
            throw ModelFormatError.file(path, "unsupported GGUF version \(version)\(hint); versions 2 and 3 are read")
        }
        let tensorCount = try reader.count("tensor count", limit: Limits.tensors)
        let kvCount = try reader.count("metadata count", limit: Limits.metadata)
        var metadata: [(key: String, value: GGUFValue)] = []
        var values: [String: GGUFValue] = [:]
        for _ in 0..<kvCount {
            let key = try reader.string()
            let typeID = try reader.u32()
            let value = try reader.value(typeID, key: key, depth: 0)
            guard values.updateValue(value, forKey: key) == nil else {
                throw ModelFormatError.file(path, "metadata key '\(key)' appears twice")
            }
            metadata.append((key, value))
        }
        var alignment = 32
        if let given = values["general.alignment"] {
            guard let a = given.intValue, a > 0, a <= 1 << 20, a & (a - 1) == 0 else {
                throw ModelFormatError.file(path, "general.alignment \(given) is not a power of two")
            }
            alignment = a
        }
        struct RawInfo { var name: String; var dims: [Int]; var type: GGMLType; var offset: UInt64 }
        var raw: [RawInfo] = []
        var seen = Set<String>()
        for _ in 0..<tensorCount {
            let name = try reader.string()
            guard seen.insert(name).inserted else { throw ModelFormatError.tensor(name, in: path, "listed twice") }
            let n = Int(try reader.u32())
            guard n >= 1, n <= Limits.dimensions else {
                throw ModelFormatError.tensor(name, in: path, "\(n) dimensions (1 to \(Limits.dimensions) allowed)")
            }
            var dims: [Int] = []
            for _ in 0..<n {
                guard let d = Int(exactly: try reader.u64()), d <= 1 << 40 else {
                    throw ModelFormatError.tensor(name, in: path, "dimension out of range")
                }
                dims.append(d)
            }
            let type = GGMLType(rawValue: try reader.u32())
            guard type.isKnown else { throw ModelFormatError.tensor(name, in: path, "unknown ggml type id \(type.rawValue)") }
            raw.append(RawInfo(name: name, dims: dims, type: type, offset: try reader.u64()))
        }
        let dataOffset = (reader.offset + alignment - 1) / alignment * alignment
        var tensors: [GGUFTensorInfo] = []
        for info in raw {
            var elements: Int? = 1
            for d in info.dims {
                guard let e = elements else { break }
                let (p, overflow) = e.multipliedReportingOverflow(by: d)
                elements = overflow ? nil : p
            }
            guard let count = elements, info.dims[0] % max(info.type.blockSize, 1) == 0,
                  let byteCount = info.type.byteCount(elements: count) else {
                throw ModelFormatError.tensor(info.name, in: path, "shape \(info.dims) is not a whole number of \(info.type) blocks of \(info.type.blockSize)")
            }
            guard info.offset % UInt64(alignment) == 0, let offset = Int(exactly: info.offset),
                  offset <= bytes.count - dataOffset, byteCount <= bytes.count - dataOffset - offset else {
                throw ModelFormatError.tensor(info.name, in: path, "data (\(byteCount) bytes at data offset \(info.offset)) lies outside the file or is misaligned (truncated?)")
            }
            tensors.append(GGUFTensorInfo(name: info.name, dims: info.dims, type: info.type, fileOffset: dataOffset + offset, byteCount: byteCount))
        }
        return Header(version: Int(version), metadata: metadata, values: values, tensors: tensors, alignment: alignment, dataOffset: dataOffset)
    }

    /// Bounds-checked little-endian reads.
    struct Reader {
        let bytes: UnsafeRawBufferPointer
        let path: String
        var offset = 0

        init(bytes: UnsafeRawBufferPointer, path: String) {
            self.bytes = bytes
            self.path = path
        }

        var remaining: Int { bytes.count - offset }

        mutating func take<T: FixedWidthInteger>(_: T.Type) throws -> T {
            let size = MemoryLayout<T>.size
            guard remaining >= size, let base = bytes.baseAddress else {
                throw ModelFormatError.file(path, "truncated header at byte \(offset)")
            }
            defer { offset += size }
            return T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
        }

        mutating func u32() throws -> UInt32 { try take(UInt32.self) }
        mutating func u64() throws -> UInt64 { try take(UInt64.self) }

        /// A u64 count that must not exceed `limit`.
        mutating func count(_ what: String, limit: Int) throws -> Int {
            let value = try u64()
            guard value <= UInt64(limit) else { throw ModelFormatError.file(path, "\(what) \(value) exceeds the limit of \(limit)") }
            return Int(value)
        }

        mutating func string() throws -> String {
            let length = try u64()
            guard length <= UInt64(min(remaining, Limits.stringBytes)), let base = bytes.baseAddress else {
                throw ModelFormatError.file(path, "string of \(length) bytes at byte \(offset) runs past the end of the header")
            }
            let n = Int(length)
            defer { offset += n }
            // Invalid UTF-8 is repaired, not refused: token strings may hold partial sequences.
            return String(decoding: UnsafeRawBufferPointer(start: base + offset, count: n), as: UTF8.self)
        }

        mutating func value(_ typeID: UInt32, key: String, depth: Int) throws -> GGUFValue {
            guard let type = GGUFValueType(rawValue: typeID) else {
                throw ModelFormatError.file(path, "metadata '\(key)': unknown value type \(typeID)")
            }
            switch type {
            case .uint8: return .unsigned(UInt64(try take(UInt8.self)))
            case .int8: return .signed(Int64(try take(Int8.self)))
            case .uint16: return .unsigned(UInt64(try take(UInt16.self)))
            case .int16: return .signed(Int64(try take(Int16.self)))
            case .uint32: return .unsigned(UInt64(try take(UInt32.self)))
            case .int32: return .signed(Int64(try take(Int32.self)))
            case .uint64: return .unsigned(try take(UInt64.self))
            case .int64: return .signed(try take(Int64.self))
            case .float32: return .float(Double(Float(bitPattern: try take(UInt32.self))))
            case .float64: return .float(Double(bitPattern: try take(UInt64.self)))
            case .bool:
                let b = try take(UInt8.self)
                guard b <= 1 else { throw ModelFormatError.file(path, "metadata '\(key)': bool byte \(b)") }
                return .bool(b == 1)
            case .string: return .string(try string())
            case .array:
                guard depth < Limits.arrayDepth else { throw ModelFormatError.file(path, "metadata '\(key)': arrays nested too deeply") }
                let elementType = try u32()
                let count = try u64()
                // Every element takes at least one byte: a count beyond the bytes left is damage.
                guard count <= UInt64(remaining) else {
                    throw ModelFormatError.file(path, "metadata '\(key)': array of \(count) values runs past the end of the header")
                }
                var values: [GGUFValue] = []
                values.reserveCapacity(Int(count))
                for _ in 0..<Int(count) { values.append(try value(elementType, key: key, depth: depth + 1)) }
                return .array(values)
            }
        }
    }
}
