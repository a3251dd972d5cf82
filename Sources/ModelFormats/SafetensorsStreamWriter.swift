import Foundation

/// Writes a `*.safetensors` file whose tensors are produced one after another, without
/// holding them in memory: the header is written first (every name, dtype and shape is known
/// up front), then each tensor's bytes are appended in the header's order, in any number of
/// pieces. Multi-gigabyte synthetic checkpoints are written this way.
public final class SafetensorsStreamWriter {
    /// One tensor the file will hold.
    public struct Tensor: Sendable {
        public var name: String
        public var dtype: TensorDType
        public var shape: [Int]
        public var byteCount: Int { shape.reduce(1, *) * dtype.size }

        public init(name: String, dtype: TensorDType, shape: [Int]) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
        }
    }

    private let url: URL
    private let handle: FileHandle
    private let tensors: [Tensor]
    private var current = 0
    private var writtenInCurrent = 0

    /// Creates (or truncates) `url` and writes the header for `tensors`, laid out in order.
    public init(url: URL, tensors: [Tensor]) throws {
        self.url = url
        self.tensors = tensors
        guard FileManager.default.createFile(atPath: url.path, contents: nil),
              let handle = FileHandle(forWritingAtPath: url.path) else {
            throw ModelFormatError.file(url.path, "cannot create")
        }
        self.handle = handle
        var header: [String: Any] = ["__metadata__": ["format": "pt"]]
        var offset = 0
        for tensor in tensors {
            header[tensor.name] = ["dtype": tensor.dtype.rawValue, "shape": tensor.shape, "data_offsets": [offset, offset + tensor.byteCount]]
            offset += tensor.byteCount
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
        while (json.count + 8) % 8 != 0 { json.append(0x20) }
        var prefix = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { prefix.append(contentsOf: $0) }
        prefix.append(json)
        try write(prefix)
        skipEmptyTensors()
    }

    /// The tensor whose bytes come next, or nil when every tensor is complete.
    public var nextTensor: Tensor? { current < tensors.count ? tensors[current] : nil }

    /// Appends `bytes` to the current tensor; a piece may not cross into the next tensor.
    public func append(_ bytes: UnsafeRawBufferPointer) throws {
        guard current < tensors.count else { throw ModelFormatError.file(url.path, "more bytes than the header declares") }
        let tensor = tensors[current]
        guard writtenInCurrent + bytes.count <= tensor.byteCount else {
            throw ModelFormatError.file(url.path, "\(tensor.name): \(writtenInCurrent + bytes.count) bytes written, \(tensor.byteCount) declared")
        }
        try write(Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: bytes.baseAddress!), count: bytes.count, deallocator: .none))
        writtenInCurrent += bytes.count
        if writtenInCurrent == tensor.byteCount {
            current += 1
            writtenInCurrent = 0
            skipEmptyTensors()
        }
    }

    /// Checks that every declared byte was written and closes the file.
    public func finish() throws {
        defer { try? handle.close() }
        guard current == tensors.count else {
            throw ModelFormatError.file(url.path, "\(tensors[current].name): incomplete (\(writtenInCurrent) of \(tensors[current].byteCount) bytes)")
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
