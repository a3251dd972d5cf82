import Foundation
import TensorMath

/// How the low-bit copies of a store's experts are encoded.
public enum LowBitKind: String, Codable, Sendable, CaseIterable {
    /// ggml Q2_K (2.625 bits a weight) for matrices whose input width 256 divides, Q4_0 (4.5)
    /// for those only 32 divides, bf16 for the rest.
    case q2

    /// The ggml type a `[rows, cols]` matrix's copy is stored in.
    public func ggmlType(cols: Int) -> GGMLType {
        if cols % GGMLType.superBlock == 0 { return .q2_K }
        if cols % 32 == 0 { return .q4_0 }
        return .bf16
    }
}

/// The manifest's record of the low-bit copies: one extra blob per routed expert, in the same
/// `experts.bin` after the full blobs (so one O_DIRECT descriptor reads both), each matrix in the
/// ggml type `LowBitKind.ggmlType(cols:)` gives it. A store with copies is format version 4.
public struct LowBitCopiesSection: Codable, Sendable {
    /// The encoding.
    public var kind: LowBitKind
    /// ggml type names of the gate, up and down matrices (the same for every expert).
    public var ggmlTypes: [String]
    /// One entry per routed expert, ordered by layer then expert (stored raw, no planes).
    public var blobs: [ExpertBlobEntry]
}

/// Adds low-bit copies to an existing store (`pack --low-bit-copies q2`, `moe-serve
/// low-bit-copies STORE`): every expert is read and checked, dequantised to float32 row by row
/// (`WeightMatrix.row`), encoded (`GGMLQuantize`) and appended to `experts.bin`; then the
/// manifest is replaced atomically (written beside it, fsynced, renamed). Until that rename the
/// store is unchanged for readers: its manifest still ends `experts.bin` where it did, and bytes
/// past that end are ignored.
public enum LowBitCopies {
    /// The blob layout of `kind` copies for a store's expert shapes.
    public static func layout(kind: LowBitKind, experts: ExpertStoreManifest.ExpertSection) throws -> ExpertBlobLayout {
        let types = [experts.gateShape, experts.upShape, experts.downShape].map { kind.ggmlType(cols: $0.count == 2 ? $0[1] : 0) }
        return try ExpertBlobLayout(dtype: .ggml, gateShape: experts.gateShape, upShape: experts.upShape, downShape: experts.downShape,
                                    biases: experts.biases ?? false, ggmlTypes: types)
    }

    /// What `add` wrote.
    public struct Summary: Sendable {
        /// The copies' section as written to the manifest.
        public var section: LowBitCopiesSection
        /// Bytes of one copy on disk (4 KiB-rounded) and of one full expert.
        public var copyBytes: Int, fullBytes: Int
    }

    /// Appends `kind` copies of every expert of the store at `url` and records them in its
    /// manifest. Refuses a store that already has copies. `progress` gets blobs done and the total.
    @discardableResult
    public static func add(kind: LowBitKind, to url: URL, progress: ((Int, Int) -> Void)? = nil) throws -> Summary {
        let store = try ExpertStore(url: url, checkDense: false, ioEngine: .threads)
        var manifest = store.manifest
        let checksum = store.checksum // the copies are checked as the store's other blobs
        guard manifest.lowBitCopies == nil else {
            throw ModelFormatError.file(url.path, "the store already has low-bit copies (\(manifest.lowBitCopies!.kind.rawValue))")
        }
        let layout = try layout(kind: kind, experts: manifest.experts)
        let path = url.appendingPathComponent(manifest.experts.file).path
        let fd = open(path, O_WRONLY)
        guard fd >= 0 else { throw ModelFormatError.file(path, "cannot open for writing: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let padded = ExpertStore.roundUp(layout.rawLength)
        let buffer = AlignedBuffer<UInt8>(count: padded, alignment: DirectFileReader.granule)
        var offset = manifest.experts.fileSize
        var entries: [ExpertBlobEntry] = []
        let blobs = manifest.experts.blobs
        for (done, blob) in blobs.enumerated() {
            let full = try store.readExpert(layer: blob.layer, expert: blob.expert)
            let base = UnsafeMutableRawPointer(buffer.pointer)
            base.initializeMemory(as: UInt8.self, repeating: 0, count: padded)
            for (matrix, place) in [(full.gate, layout.gate), (full.up, layout.up), (full.down, layout.down)] {
                let rowBytes = place.dataLength / place.rows
                for r in 0..<place.rows {
                    let values = matrix.row(r) // [cols] float32
                    encode(values, type: place.ggmlType!, into: base + place.dataOffset + r * rowBytes)
                }
            }
            if let biases = full.biases { layout.encode(biases: biases, into: base) }
            var entry = ExpertBlobEntry(layer: blob.layer, expert: blob.expert, offset: offset, storedLength: layout.rawLength,
                                        rawLength: layout.rawLength, checksum: checksum.digest(base, count: layout.rawLength),
                                        storedRaw: true, planes: [])
            entry.ggmlTypes = nil
            try writeAll(fd, base, count: padded, at: offset, path: path)
            entries.append(entry)
            offset += padded
            progress?(done + 1, blobs.count)
        }
        guard ftruncate(fd, off_t(offset)) == 0, fsync(fd) == 0 else {
            throw ModelFormatError.file(path, "cannot finish writing: \(String(cString: strerror(errno)))")
        }
        let section = LowBitCopiesSection(kind: kind, ggmlTypes: [layout.gate, layout.up, layout.down].map { $0.ggmlType!.name }, blobs: entries)
        manifest.lowBitCopies = section
        manifest.experts.fileSize = offset
        manifest.formatVersion = max(manifest.formatVersion, 4)
        let manifestURL = url.appendingPathComponent(ExpertStoreManifest.fileName)
        let temporary = url.appendingPathComponent(ExpertStoreManifest.fileName + ".tmp")
        let data = try manifest.encoded()
        guard FileManager.default.createFile(atPath: temporary.path, contents: data) else {
            throw ModelFormatError.file(temporary.path, "cannot write the new manifest")
        }
        let tfd = open(temporary.path, O_RDONLY)
        if tfd >= 0 { _ = fsync(tfd); close(tfd) }
        guard rename(temporary.path, manifestURL.path) == 0 else {
            throw ModelFormatError.file(manifestURL.path, "cannot replace the manifest: \(String(cString: strerror(errno)))")
        }
        return Summary(section: section, copyBytes: padded, fullBytes: store.expertBufferSize)
    }

    /// Encodes one row `values[cols]` as `type` at `out`.
    static func encode(_ values: [Float], type: GGMLType, into out: UnsafeMutableRawPointer) {
        values.withUnsafeBufferPointer { v in
            switch type {
            case .q2_K: GGMLQuantize.q2K(v.baseAddress!, cols: v.count, into: out)
            case .q4_0: GGMLQuantize.q4_0(v.baseAddress!, cols: v.count, into: out)
            default:
                let bf16 = out.assumingMemoryBound(to: UInt16.self)
                for i in 0..<v.count { bf16[i] = FloatConversion.bf16(from: v[i]) }
            }
        }
    }

    private static func writeAll(_ fd: Int32, _ bytes: UnsafeRawPointer, count: Int, at offset: Int, path: String) throws {
        var written = 0
        while written < count {
            let n = pwrite(fd, bytes + written, count - written, off_t(offset + written))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw ModelFormatError.file(path, "write failed: \(n < 0 ? String(cString: strerror(errno)) : "no progress")")
            }
            written += n
        }
    }
}
