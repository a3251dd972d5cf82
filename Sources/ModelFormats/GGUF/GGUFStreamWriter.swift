import Foundation
import TensorMath

/// Writes a GGUF file (version 3, little-endian) whose tensors are produced one after another,
/// without holding them in memory: the header (metadata and every tensor's name, ggml shape,
/// type and offset) is written first, then each tensor's bytes are appended in the header's
/// order, in any number of pieces; each tensor starts at a multiple of `alignment` (32, ggml's
/// default, so `general.alignment` is not written). `GGUFFile` reads what this writes.
public final class GGUFStreamWriter {
    /// One metadata value, with the exact GGUF type llama.cpp's loader checks it against
    /// (`block_count` must be a u32, `rope.freq_base` an f32, ...).
    public enum Value: Sendable {
        case u32(UInt32)
        case i32(Int32)
        case f32(Float)
        case bool(Bool)
        case string(String)
        case strings([String])
        case i32s([Int32])
    }

    /// One tensor the file will hold.
    public struct Tensor: Sendable {
        public var name: String
        /// ggml order: `dims[0]` is the contiguous one (a PyTorch `[rows, cols]` is `[cols, rows]`).
        public var dims: [Int]
        public var type: GGMLType
        /// Bytes of the tensor's data (`dims[0]` must be a whole number of `type`'s blocks).
        public var byteCount: Int { (dims.reduce(1, *) / type.blockSize) * type.blockBytes }

        public init(name: String, dims: [Int], type: GGMLType) {
            self.name = name
            self.dims = dims
            self.type = type
        }
    }

    public static let alignment = 32

    private let url: URL
    private let handle: FileHandle
    private let tensors: [Tensor]
    private var current = 0
    private var writtenInCurrent = 0

    /// Creates (or truncates) `url` and writes the header.
    public init(url: URL, metadata: [(key: String, value: Value)], tensors: [Tensor]) throws {
        self.url = url
        self.tensors = tensors
        for tensor in tensors {
            guard (1...GGUFFile.Limits.dimensions).contains(tensor.dims.count), tensor.type.blockSize > 0,
                  tensor.dims[0] % tensor.type.blockSize == 0 else {
                throw ModelFormatError.tensor(tensor.name, in: url.path, "ggml shape \(tensor.dims) is not a whole number of \(tensor.type) blocks")
            }
        }
        guard FileManager.default.createFile(atPath: url.path, contents: nil),
              let handle = FileHandle(forWritingAtPath: url.path) else {
            throw ModelFormatError.file(url.path, "cannot create")
        }
        self.handle = handle
        var header = Data()
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { header.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { header.append(contentsOf: $0) } }
        func string(_ s: String) { u64(UInt64(s.utf8.count)); header.append(contentsOf: Array(s.utf8)) }
        u32(0x4655_4747) // "GGUF"
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(metadata.count))
        for (key, value) in metadata {
            string(key)
            switch value {
            case .u32(let v): u32(GGUFValueType.uint32.rawValue); u32(v)
            case .i32(let v): u32(GGUFValueType.int32.rawValue); u32(UInt32(bitPattern: v))
            case .f32(let v): u32(GGUFValueType.float32.rawValue); u32(v.bitPattern)
            case .bool(let v): u32(GGUFValueType.bool.rawValue); header.append(v ? 1 : 0)
            case .string(let v): u32(GGUFValueType.string.rawValue); string(v)
            case .strings(let v):
                u32(GGUFValueType.array.rawValue); u32(GGUFValueType.string.rawValue); u64(UInt64(v.count))
                for s in v { string(s) }
            case .i32s(let v):
                u32(GGUFValueType.array.rawValue); u32(GGUFValueType.int32.rawValue); u64(UInt64(v.count))
                for x in v { u32(UInt32(bitPattern: x)) }
            }
        }
        var offset = 0
        for tensor in tensors {
            string(tensor.name)
            u32(UInt32(tensor.dims.count))
            for d in tensor.dims { u64(UInt64(d)) }
            u32(tensor.type.rawValue)
            u64(UInt64(offset))
            offset += Self.padded(tensor.byteCount)
        }
        header.append(contentsOf: [UInt8](repeating: 0, count: Self.padded(header.count) - header.count))
        try write(header)
        skipEmptyTensors()
    }

    /// `count` rounded up to the alignment.
    static func padded(_ count: Int) -> Int { (count + alignment - 1) / alignment * alignment }

    /// The tensor whose bytes come next, or nil when every tensor is complete.
    public var nextTensor: Tensor? { current < tensors.count ? tensors[current] : nil }

    /// Appends `bytes` to the current tensor; a piece may not cross into the next tensor.
    public func append(_ bytes: UnsafeRawBufferPointer) throws {
        guard current < tensors.count else { throw ModelFormatError.file(url.path, "more bytes than the header declares") }
        let tensor = tensors[current]
        guard writtenInCurrent + bytes.count <= tensor.byteCount else {
            throw ModelFormatError.tensor(tensor.name, in: url.path, "\(writtenInCurrent + bytes.count) bytes written, \(tensor.byteCount) declared")
        }
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        try write(Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: base), count: bytes.count, deallocator: .none))
        writtenInCurrent += bytes.count
        if writtenInCurrent == tensor.byteCount {
            // Zeros up to the next tensor's aligned start (and after the last one, as gguf-py does).
            let padding = Self.padded(tensor.byteCount) - tensor.byteCount
            if padding > 0 { try write(Data(count: padding)) }
            current += 1
            writtenInCurrent = 0
            skipEmptyTensors()
        }
    }

    /// Checks that every declared byte was written and closes the file.
    public func finish() throws {
        defer { try? handle.close() }
        guard current == tensors.count else {
            throw ModelFormatError.tensor(tensors[current].name, in: url.path, "incomplete (\(writtenInCurrent) of \(tensors[current].byteCount) bytes)")
        }
        do { try handle.synchronize() } catch { throw ModelFormatError.file(url.path, "cannot sync: \(error.localizedDescription)") }
    }

    private func skipEmptyTensors() {
        while current < tensors.count && tensors[current].byteCount == 0 { current += 1 }
    }

    private func write(_ data: Data) throws {
        do { try handle.write(contentsOf: data) } catch {
            throw ModelFormatError.file(url.path, "cannot write: \(error.localizedDescription)")
        }
    }
}

/// ggml's reference Q4_0 encoder (`quantize_row_q4_0_ref`, which `llama-quantize` uses without
/// an importance matrix), bit for bit: per block of 32 the value of largest magnitude `m`
/// (the first one, on ties) gives `d = m / -8` (stored as float16), every value `x` becomes
/// `min(15, trunc(x · (1/d) + 8.5))` with `1/d` taken from the float32 `d` before rounding;
/// element j goes to the low nibble of byte j, element j + 16 to its high nibble.
/// (`GGMLQuantize.q4_0` divides by the rounded `d`, so it differs in rare last bits.)
public enum GGMLReferenceQ4_0 {
    /// Encodes `count` values (a multiple of 32) into `count / 32 * 18` bytes at `out`.
    public static func encode(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutableRawPointer) {
        precondition(count % 32 == 0, "Q4_0 needs a multiple of 32 weights, got \(count)")
        for b in 0..<(count / 32) {
            let src = x + 32 * b, dst = out + 18 * b
            var amax: Float = 0, extreme: Float = 0
            for j in 0..<32 {
                let v = src[j]
                if amax < abs(v) { amax = abs(v); extreme = v }
            }
            let d = extreme / -8
            let id: Float = d != 0 ? 1 / d : 0
            dst.storeBytes(of: Float16(d).bitPattern.littleEndian, toByteOffset: 0, as: UInt16.self)
            for j in 0..<16 {
                // Float → Int8 truncates toward zero in C; x·id + 8.5 is above -1 here, so Int(_:) agrees.
                let lo = UInt8(min(15, Int(src[j] * id + 8.5)))
                let hi = UInt8(min(15, Int(src[j + 16] * id + 8.5)))
                dst.storeBytes(of: lo | (hi << 4), toByteOffset: 2 + j, as: UInt8.self)
            }
        }
    }
}
