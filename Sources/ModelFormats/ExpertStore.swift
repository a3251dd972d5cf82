import Foundation
import TensorMath

/// One routed expert read from a store: its three matrices, which own (through `owner`) the
/// buffer the blob was decoded into.
public struct StoredExpert: @unchecked Sendable {
    /// `[expertWidth, hidden]`
    public let gate: WeightMatrix
    /// `[expertWidth, hidden]`
    public let up: WeightMatrix
    /// `[hidden, expertWidth]`
    public let down: WeightMatrix
    /// Bytes of the buffer holding the matrices.
    public let byteCount: Int
    /// The gate, up and down biases (gpt-oss), nil for none.
    public var biases: ExpertBiases? = nil
    /// Set on the early copy a split read hands out: `down` is not in memory (nor the blob
    /// checked) until `rest.wait()` returns (`ExpertWeights.rest`).
    public var rest: ExpertArrival? = nil
}

/// Counters of a store's expert reads since it was opened.
public struct ExpertStoreStatistics: Sendable, Codable {
    /// Blobs read.
    public var reads = 0
    /// Bytes read from disk (aligned lengths).
    public var bytesRead = 0
    /// Decoded bytes produced.
    public var rawBytes = 0
    /// Seconds spent in `pread`, summed over threads.
    public var readSeconds = 0.0
    /// Seconds spent checking and decoding, summed over threads.
    public var decodeSeconds = 0.0
    /// Blobs refused for a checksum mismatch.
    public var checksumFailures = 0
}

/// A packed expert store opened for reading (see `ExpertStorePacker` for the layout).
///
/// The dense tensors are read once into one 4 KiB-aligned buffer and served as a
/// `WeightSource` (bf16 and f32 tensors are views into it, so the model's dense weights are
/// bit-identical to the checkpoint's). Routed experts are read on demand with `pread` from an
/// `O_DIRECT` descriptor, checked against their XXH64 checksum and decoded; a mismatch is an
/// error naming the layer and expert, never garbage weights. Safe to use from several threads.
public final class ExpertStore: WeightSource, @unchecked Sendable {
    /// The store directory.
    public let url: URL
    /// Its manifest.
    public let manifest: ExpertStoreManifest
    /// The model configuration (from the manifest's copy of config.json).
    public let config: ModelConfig
    /// The decoded layout of the blobs (of the first blob for `ggml` stores, whose layers may
    /// mix ggml types: `layout(of:)` gives each blob's).
    public let layout: ExpertBlobLayout
    /// The layouts of a `ggml` store by the blobs' type names (gate, up, down); empty otherwise.
    private let ggmlLayouts: [[String]: ExpertBlobLayout]
    /// The expert data file.
    public let expertFile: DirectFileReader
    /// What reads experts from `expertFile`: the io_uring reader or the file itself (threads).
    public let expertReader: any BlockReader
    private let dense: AlignedBuffer<UInt8>
    private let denseIndex: [String: DenseTensorEntry]
    /// Index into `manifest.experts.blobs` by `layer * expertCount + expert`.
    private let blobIndex: [Int: Int]
    /// The layout of the experts' low-bit copies (`LowBitCopies`), nil when the store has none.
    public let lowBitLayout: ExpertBlobLayout?
    /// Index into `manifest.lowBitCopies.blobs`, as `blobIndex`.
    private let lowBitIndex: [Int: Int]
    private let lock = NSLock()
    private var counters = ExpertStoreStatistics()
    /// Faults injected into expert reads (failure testing; none unless `MOE_FAULTS` is set).
    public let faults: FaultInjector

    /// The file in a model directory (store or checkpoint) holding its fitted predictor
    /// probes (`scripts/train_predictor_probes.py`), loaded unless a command names others.
    public static let predictorProbesFile = "predictor-probes.safetensors"
    /// A model's fitted expert surrogates (`ExpertSurrogates`), carried with it like the probes.
    public static let expertSurrogatesFile = "expert-surrogates.safetensors"

    /// Whether `url` is a store directory (has a manifest.json) rather than a checkpoint.
    public static func isStore(at url: URL) -> Bool {
        FileManager.default.fileExists(atPath: url.appendingPathComponent(ExpertStoreManifest.fileName).path)
    }

    /// Opens the store at `url`: reads and validates the manifest, checks the data files'
    /// sizes, and loads and checksums the dense tensors (`checkDense: false` defers the dense
    /// checksums to `verify()`). `faults` injects read faults (tests; `MOE_FAULTS` by default).
    /// `ioEngine` picks the expert reader (`MOE_IO_ENGINE`, else io_uring where available);
    /// `ioPieceBytes`, the pieces its io_uring reader cuts a read into (tests use small ones).
    public init(url: URL, checkDense: Bool = true, faults: FaultInjector = .shared,
                ioEngine: IOEngineChoice = .environmentDefault, ioPieceBytes: Int = IOEngine.defaultPieceBytes) throws {
        self.url = url
        self.faults = faults
        let manifest = try ExpertStoreManifest.load(from: url)
        self.manifest = manifest
        let manifestPath = url.appendingPathComponent(ExpertStoreManifest.fileName).path
        if let packed = manifest.modelConfig {
            config = packed // packed from a GGUF file: its metadata's configuration
        } else {
            let configData = try JSONEncoder().encode(manifest.config)
            config = try ModelConfig.parse(configData, file: "\(manifestPath) (config)")
        }
        let experts = manifest.experts
        var ggmlLayouts: [[String]: ExpertBlobLayout] = [:]
        if experts.dtype == .ggml {
            for blob in experts.blobs {
                guard let names = blob.ggmlTypes else {
                    throw ModelFormatError.file(manifestPath, "damaged store manifest: layer \(blob.layer) expert \(blob.expert) has no ggml_types")
                }
                if ggmlLayouts[names] != nil { continue }
                let types = try names.map { name -> GGMLType in
                    guard let type = GGMLType(storeName: name) else {
                        throw ModelFormatError.file(manifestPath, "layer \(blob.layer) expert \(blob.expert): ggml type '\(name)' is not supported by this moe-serve")
                    }
                    return type
                }
                ggmlLayouts[names] = try ExpertBlobLayout(dtype: .ggml, gateShape: experts.gateShape, upShape: experts.upShape,
                                                          downShape: experts.downShape, biases: experts.biases ?? false, ggmlTypes: types)
            }
        }
        self.ggmlLayouts = ggmlLayouts
        let baseLayout: ExpertBlobLayout
        if experts.dtype == .ggml, let first = experts.blobs.first?.ggmlTypes, let firstLayout = ggmlLayouts[first] {
            baseLayout = firstLayout
        } else {
            baseLayout = try ExpertBlobLayout(dtype: experts.dtype, gateShape: experts.gateShape, upShape: experts.upShape, downShape: experts.downShape,
                                              biases: experts.biases ?? false)
        }
        layout = baseLayout
        let layoutOf = { (blob: ExpertBlobEntry) in blob.ggmlTypes.flatMap { ggmlLayouts[$0] } ?? baseLayout }
        maxRawLength = experts.dtype == .ggml ? ggmlLayouts.values.map(\.rawLength).max() ?? 0 : baseLayout.rawLength

        // Every routed expert must have exactly one sane blob entry.
        var index: [Int: Int] = [:]
        for (i, blob) in experts.blobs.enumerated() {
            let name = "layer \(blob.layer) expert \(blob.expert)"
            guard config.isMoELayer(blob.layer), blob.expert >= 0, blob.expert < config.expertCount else {
                throw ModelFormatError.file(manifestPath, "damaged store manifest: blob for \(name), which the config does not have")
            }
            guard blob.offset % experts.alignment == 0, blob.offset >= 0, blob.storedLength >= 0,
                  blob.offset + blob.storedLength <= experts.fileSize, blob.rawLength == layoutOf(blob).rawLength else {
                throw ModelFormatError.file(manifestPath, "damaged store manifest: \(name) has an invalid offset or length")
            }
            guard index.updateValue(i, forKey: blob.layer * config.expertCount + blob.expert) == nil else {
                throw ModelFormatError.file(manifestPath, "damaged store manifest: \(name) is listed twice")
            }
        }
        for layer in config.moeLayers {
            for expert in 0..<config.expertCount where index[layer * config.expertCount + expert] == nil {
                throw ModelFormatError.file(manifestPath, "damaged store manifest: no blob for layer \(layer) expert \(expert)")
            }
        }
        blobIndex = index
        checksum = try StoreChecksum(manifestName: manifest.checksumAlgorithm)
        (lowBitLayout, lowBitIndex) = try Self.lowBitCopies(manifest, config: config, path: manifestPath)
        bufferPool = BufferPool(maxBytes: Self.pooledBuffers * Self.roundUp(maxRawLength))

        // experts.bin: a short file means lost blobs; name the first one.
        let expertURL = url.appendingPathComponent(experts.file)
        let expertFile = try DirectFileReader(path: expertURL.path)
        self.expertFile = expertFile
        if expertFile.size < experts.fileSize {
            let actualSize = expertFile.size
            let lost = experts.blobs.filter { $0.offset + $0.storedLength > actualSize }
            let first = lost.min { ($0.layer, $0.expert) < ($1.layer, $1.expert) }
            let which = first.map { "layer \($0.layer) expert \($0.expert)" + (lost.count > 1 ? " and \(lost.count - 1) more blobs lie" : " lies") + " past the end" } ?? "padding missing"
            throw ModelFormatError.file(expertURL.path, "truncated: \(actualSize) of \(experts.fileSize) bytes; \(which) (re-run moe-serve pack)")
        }
        expertReader = try IOEngine.reader(for: expertFile, choice: ioEngine, pieceBytes: ioPieceBytes)
        if let uring = expertReader as? UringFileReader, Self.registersPooledBuffers {
            // The cache's expert buffers all come from and go back to `bufferPool`; each is
            // registered on its first read and unregistered just before the pool unmaps it.
            // Without a table (an old kernel) reads just stay plain.
            if (try? uring.enableTargetRegistration(slots: Self.registrationSlots)) != nil {
                bufferPool.unmapObserver = { [weak uring] start, _ in uring?.unregisterTarget(start) }
                registersTargets = true
            }
        }

        // dense.bin, read whole: the model keeps all of it resident anyway.
        let densePath = url.appendingPathComponent(manifest.dense.file).path
        let denseReader = try DirectFileReader(path: densePath, direct: false)
        guard denseReader.size == manifest.dense.fileSize else {
            throw ModelFormatError.file(densePath, "size \(denseReader.size) bytes, the manifest expects \(manifest.dense.fileSize) (truncated or replaced; re-run moe-serve pack)")
        }
        dense = AlignedBuffer<UInt8>(count: manifest.dense.fileSize, alignment: DirectFileReader.granule)
        _ = try denseReader.read(into: dense.pointer, offset: 0, length: manifest.dense.fileSize)
        var tensors: [String: DenseTensorEntry] = [:]
        for tensor in manifest.dense.tensors {
            guard tensor.offset >= 0, tensor.offset % ExpertBlobLayout.arrayAlignment == 0,
                  tensor.offset + tensor.length <= manifest.dense.fileSize,
                  tensor.length == Self.denseLength(tensor) else {
                throw ModelFormatError.file(manifestPath, "damaged store manifest: dense tensor '\(tensor.name)' has an invalid offset, length or shape")
            }
            tensors[tensor.name] = tensor
        }
        denseIndex = tensors
        if checkDense, let bad = denseProblems().first { throw ModelFormatError.file(densePath, bad) }
    }

    // MARK: Dense tensors

    /// Problems with the dense tensors' checksums, one line each (empty when all match).
    public func denseProblems() -> [String] {
        manifest.dense.tensors.compactMap { tensor in
            let digest = checksum.digest(dense.pointer + tensor.offset, count: tensor.length)
            return digest == tensor.checksum ? nil : "dense tensor '\(tensor.name)': checksum mismatch (stored \(tensor.checksum), computed \(digest))"
        }
    }

    public func contains(_ name: String) -> Bool { denseIndex[name] != nil }

    /// Bytes a dense tensor must occupy: raw elements, ggml blocks, or the quantised layout of `DenseEncoding`.
    static func denseLength(_ tensor: DenseTensorEntry) -> Int {
        if let name = tensor.ggmlType {
            guard let type = GGMLType(storeName: name), tensor.shape.count == 2, tensor.shape.allSatisfy({ $0 > 0 }),
                  tensor.shape[1] % type.blockSize == 0 else { return -1 }
            return type.byteCount(elements: tensor.shape[0] * tensor.shape[1]) ?? -1
        }
        guard let type = tensor.quantized else { return tensor.shape.reduce(1, *) * tensor.dtype.size }
        guard tensor.shape.count == 2, tensor.shape[0] > 0, tensor.shape[1] > 0, type == .int8 || type == .q4,
              type != .q4 || tensor.shape[1] % Quantization.q4BlockSize == 0 else { return -1 }
        return DenseEncoding.layout(type, rows: tensor.shape[0], cols: tensor.shape[1]).length
    }

    private func denseEntry(_ name: String) throws -> DenseTensorEntry {
        guard let entry = denseIndex[name] else {
            throw ModelFormatError.tensor(name, in: url.path, "missing from the store's dense tensors")
        }
        return entry
    }

    public func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
        let entry = try denseEntry(name)
        guard entry.shape == [rows, cols] || (rows == 1 && entry.shape == [cols]) else {
            throw ModelFormatError.tensor(name, in: url.path, "shape \(entry.shape) does not match the config's [\(rows), \(cols)]")
        }
        let base = UnsafeRawPointer(dense.pointer + entry.offset)
        if let typeName = entry.ggmlType, let type = GGMLType(storeName: typeName) {
            return WeightMatrix(rows: rows, cols: cols, storage: ExpertBlobLayout.storage(ggml: type, at: base), owner: dense)
        }
        if let type = entry.quantized { return DenseEncoding.matrix(base, rows: rows, cols: cols, type: type, owner: dense) }
        switch entry.dtype {
        case .bf16: return WeightMatrix(rows: rows, cols: cols, storage: .bf16(base.assumingMemoryBound(to: UInt16.self)), owner: dense)
        case .f32: return WeightMatrix(rows: rows, cols: cols, storage: .f32(base.assumingMemoryBound(to: Float.self)), owner: dense)
        case .f16:
            let buffer = AlignedBuffer<Float>(count: rows * cols)
            CheckpointDirectory.widen(UnsafeRawBufferPointer(start: base, count: entry.length), dtype: .f16, into: buffer.pointer, count: rows * cols)
            return WeightMatrix(rows: rows, cols: cols, storage: .f32(UnsafePointer(buffer.pointer)), owner: buffer)
        case .f8e4m3:
            throw ModelFormatError.tensor(name, in: url.path, "float8 tensor in a store (pack dequantizes them)")
        case .u8:
            throw ModelFormatError.tensor(name, in: url.path, "U8 tensor cannot be used as a float matrix")
        }
    }

    public func vector(_ name: String, count: Int) throws -> [Float] {
        let entry = try denseEntry(name)
        guard entry.shape.reduce(1, *) == count else {
            throw ModelFormatError.tensor(name, in: url.path, "shape \(entry.shape) does not match the config's \(count) elements")
        }
        var values = [Float](repeating: 0, count: count)
        if entry.quantized != nil || entry.ggmlType != nil, entry.shape.count == 2 {
            // A quantised matrix read whole (rare): widened row by row.
            let matrix = try self.matrix(name, rows: entry.shape[0], cols: entry.shape[1])
            for r in 0..<matrix.rows { values.replaceSubrange(r * matrix.cols..<(r + 1) * matrix.cols, with: matrix.row(r)) }
            return values
        }
        values.withUnsafeMutableBufferPointer {
            CheckpointDirectory.widen(UnsafeRawBufferPointer(start: dense.pointer + entry.offset, count: entry.length),
                                      dtype: entry.dtype, into: $0.baseAddress!, count: count)
        }
        return values
    }

    // MARK: Experts

    /// The manifest entry of routed expert `expert` of `layer`.
    public func blob(layer: Int, expert: Int) throws -> ExpertBlobEntry {
        guard expert >= 0, expert < config.expertCount, let i = blobIndex[layer * config.expertCount + expert] else {
            throw ModelFormatError.file(url.path, "layer \(layer) expert \(expert) is not in the store")
        }
        return manifest.experts.blobs[i]
    }

    /// The low-bit copies' layout and index, validated as the full blobs are: every routed
    /// expert has one copy, inside `experts.bin`, of the layout's length.
    private static func lowBitCopies(_ manifest: ExpertStoreManifest, config: ModelConfig, path: String) throws -> (ExpertBlobLayout?, [Int: Int]) {
        guard let copies = manifest.lowBitCopies else { return (nil, [:]) }
        let layout = try LowBitCopies.layout(kind: copies.kind, experts: manifest.experts)
        guard copies.ggmlTypes == [layout.gate, layout.up, layout.down].map({ $0.ggmlType!.name }) else {
            throw ModelFormatError.file(path, "damaged store manifest: low-bit copies of types \(copies.ggmlTypes), expected \(layout.ggmlTypes!.map(\.name))")
        }
        var index: [Int: Int] = [:]
        for (i, blob) in copies.blobs.enumerated() {
            guard config.isMoELayer(blob.layer), blob.expert >= 0, blob.expert < config.expertCount,
                  blob.offset % manifest.experts.alignment == 0, blob.offset >= 0, blob.storedRaw,
                  blob.storedLength == layout.rawLength, blob.rawLength == layout.rawLength,
                  blob.offset + blob.storedLength <= manifest.experts.fileSize,
                  index.updateValue(i, forKey: blob.layer * config.expertCount + blob.expert) == nil else {
                throw ModelFormatError.file(path, "damaged store manifest: low-bit copy of layer \(blob.layer) expert \(blob.expert) is invalid or listed twice")
            }
        }
        guard index.count == manifest.experts.blobs.count else {
            throw ModelFormatError.file(path, "damaged store manifest: \(index.count) low-bit copies for \(manifest.experts.blobs.count) experts")
        }
        return (layout, index)
    }

    /// Bytes a low-bit copy occupies in RAM (4 KiB-rounded), nil without copies.
    public var lowBitBufferSize: Int? { lowBitLayout.map { Self.roundUp($0.rawLength) } }

    /// Reads and checks the low-bit copy of expert `expert` of `layer` into a new buffer (one
    /// O_DIRECT read of `lowBitBufferSize` bytes; counted in `statistics` as any read).
    public func readLowBitExpert(layer: Int, expert: Int) throws -> StoredExpert {
        guard let layout = lowBitLayout, let copies = manifest.lowBitCopies else {
            throw ModelFormatError.file(url.path, "the store has no low-bit copies (add them with moe-serve low-bit-copies)")
        }
        guard expert >= 0, expert < config.expertCount, let i = lowBitIndex[layer * config.expertCount + expert] else {
            throw ModelFormatError.file(url.path, "layer \(layer) expert \(expert) has no low-bit copy")
        }
        let entry = copies.blobs[i]
        let buffer = AlignedBuffer<UInt8>(count: Self.roundUp(layout.rawLength), alignment: DirectFileReader.granule, zeroed: false)
        let t0 = DispatchTime.now().uptimeNanoseconds
        try readStored(entry, into: buffer.pointer)
        do {
            try checkStored(entry, at: buffer.pointer)
        } catch {
            record { $0.checksumFailures += 1 }
            throw error
        }
        let t1 = DispatchTime.now().uptimeNanoseconds
        record {
            $0.reads += 1
            $0.bytesRead += Self.roundUp(entry.storedLength)
            $0.rawBytes += entry.rawLength
            $0.readSeconds += Double(t1 - t0) / 1e9
        }
        let matrices = layout.matrices(at: buffer.pointer, owner: buffer)
        return StoredExpert(gate: matrices.gate, up: matrices.up, down: matrices.down, byteCount: buffer.byteCount,
                            biases: layout.biases(at: buffer.pointer, owner: buffer))
    }

    /// `value` rounded up to the O_DIRECT granule.
    public static func roundUp(_ value: Int) -> Int {
        (value + DirectFileReader.granule - 1) / DirectFileReader.granule * DirectFileReader.granule
    }

    /// Bytes a destination buffer for `readExpert(layer:expert:into:)` needs: the decoded
    /// blob rounded up to 4 KiB (uncompressed blobs are read straight into it; the largest
    /// blob's for `ggml` stores).
    public var expertBufferSize: Int { Self.roundUp(maxRawLength) }
    /// The largest decoded blob.
    private let maxRawLength: Int

    /// The decoded layout of `entry`'s blob (they differ between layers only in `ggml` stores).
    public func layout(of entry: ExpertBlobEntry) -> ExpertBlobLayout {
        entry.ggmlTypes.flatMap { ggmlLayouts[$0] } ?? layout
    }

    /// Buffers of evicted experts, reused by the next reads (at most `pooledBuffers` of them).
    public let bufferPool: BufferPool
    /// Whether `bufferPool`'s buffers are registered with the io_uring reader.
    private var registersTargets = false
    /// The checksum of this store's blobs and dense tensors (the manifest's algorithm).
    public let checksum: StoreChecksum
    /// How many expert buffers the pool keeps; the memory plan reserves them.
    public static let pooledBuffers = 4

    /// Whether the pool's expert buffers are registered with the io_uring reader, so reads into
    /// them are `READ_FIXED` and skip pinning their pages on every read
    /// (`MOE_REGISTERED_BUFFERS=off` turns it off, for comparison).
    public static let registersPooledBuffers: Bool = {
        let value = ProcessInfo.processInfo.environment["MOE_REGISTERED_BUFFERS"]?.lowercased()
        return !(value == "0" || value == "off" || value == "false")
    }()
    /// Slots in the reader's table of registered buffers: the kernel's most. A cache of more
    /// experts than this reads the rest unregistered.
    public static let registrationSlots = 1 << 14

    /// Whether stores split the reads a caller can start on early (`readExpert(...gateUpArrived:)`):
    /// only with `MOE_SPLIT_READS=on`. Off by default: on this 2-core VM's disk they measured
    /// 1.01x for one sequence and 0.94x for eight (docs/BENCHMARKS.md, "Session 22: split reads").
    public static let splitsReadsByDefault: Bool = {
        let value = ProcessInfo.processInfo.environment["MOE_SPLIT_READS"]?.lowercased()
        return value == "1" || value == "on" || value == "true"
    }()
    /// Whether this store splits reads (`splitsReadsByDefault` unless set). Set before reads begin.
    public var splitsReads = ExpertStore.splitsReadsByDefault
    /// Blobs shorter than this are read whole even when the caller could start early: a small
    /// expert's gate and up products are too short to hide anything behind. Set before reads begin.
    public var splitReadMinimumBytes = 256 * 1024

    /// Reads, checks and decodes expert `expert` of `layer` into a new buffer.
    public func readExpert(layer: Int, expert: Int) throws -> StoredExpert {
        try readExpert(layer: layer, expert: expert, gateUpArrived: nil)
    }

    /// As `readExpert(layer:expert:)`; when `gateUpArrived` is given and the blob is stored raw,
    /// without biases and at least `splitReadMinimumBytes` long, it is a split read: where the
    /// reader splits (io_uring, when gate and up end before the read's last piece),
    /// `gateUpArrived` receives the expert (with `rest` set) as soon as its gate and up matrices
    /// are in memory, on this thread, while the down matrix is still being read. This call then
    /// returns the same expert whole (without `rest`), after finishing `rest` (successfully or
    /// with the error it throws).
    public func readExpert(layer: Int, expert: Int, gateUpArrived: ((StoredExpert) -> Void)?) throws -> StoredExpert {
        try readExpert(layer: layer, expert: expert, into: pooledExpertBuffer(), gateUpArrived: gateUpArrived)
    }

    /// A buffer for one expert from `bufferPool` (a warmed or recycled one when the pool has it).
    private func pooledExpertBuffer() -> AlignedBuffer<UInt8> {
        AlignedBuffer<UInt8>(count: expertBufferSize, alignment: DirectFileReader.granule, zeroed: false, pool: bufferPool)
    }

    /// Maps, faults in and (with io_uring) registers expert buffers ahead of the reads that will
    /// take them from `bufferPool`, one at a time while `shouldWarm(warmBytes)` allows one more
    /// (`warmBytes`: what the pool holds warmed and not yet taken), and at most `limit`.
    /// Returns how many it warmed.
    ///
    /// A read into a fresh buffer pays for its pages on the reading thread: on a virtual machine
    /// whose host backs memory on first touch, at about 0.3 GB/s, with the ring's lock held while
    /// io_uring pins them, so a cold server's first prompt waited 2-3x its reads' time
    /// (docs/BENCHMARKS.md, "Session 33").
    public func warmBuffers(limit: Int, shouldWarm: (_ warmBytes: Int) -> Bool) -> Int {
        let bytes = expertBufferSize
        // Smaller buffers come from malloc, not the pool (`AlignedBuffer.mappingThreshold`).
        guard bytes >= AlignedBuffer<UInt8>.mappingThreshold else { return 0 }
        var warmed = 0
        while warmed < limit, shouldWarm(bufferPool.warmBytes), let buffer = BufferPool.mapFresh(bytes: bytes) {
            BufferPool.populate(buffer, bytes: bytes)
            if registersTargets { _ = expertReader.registerTarget(buffer, bytes: bytes) }
            bufferPool.addWarmed(buffer, bytes: bytes)
            warmed += 1
        }
        return warmed
    }

    /// Where the down matrix's arrays begin in a blob of `layout`, rounded up to the read
    /// granule (the first part of a split read); nil when the blob cannot be split (biases,
    /// which follow down, or a first part that would be the whole blob).
    func gateUpPart(of layout: ExpertBlobLayout, storedLength: Int) -> Int? {
        guard layout.biasOffsets == nil else { return nil }
        let downStart = min(layout.down.scaleOffset ?? layout.down.dataOffset, layout.down.dataOffset)
        let part = Self.roundUp(downStart)
        return part > 0 && part < Self.roundUp(storedLength) ? part : nil
    }

    /// Reads, checks and decodes expert `expert` of `layer` into `buffer` (at least
    /// `expertBufferSize` bytes, 4 KiB-aligned), which the returned matrices then keep alive.
    /// Uncompressed blobs are read straight into `buffer`; compressed ones through a staging
    /// buffer. Throws, naming the layer and expert, on a short read or a checksum mismatch.
    public func readExpert(layer: Int, expert: Int, into buffer: AlignedBuffer<UInt8>) throws -> StoredExpert {
        try readExpert(layer: layer, expert: expert, into: buffer, gateUpArrived: nil)
    }

    /// `readExpert(layer:expert:)`, calling `transferred` on this thread once the stored bytes are
    /// in memory and before they are checked and decoded (an emulated disk waits there for the
    /// transfer's end, so the checksum's time comes after it, as on a real device).
    public func readExpert(layer: Int, expert: Int, transferred: () -> Void) throws -> StoredExpert {
        try readExpert(layer: layer, expert: expert, into: pooledExpertBuffer(), gateUpArrived: nil, transferred: transferred)
    }

    /// `readExpert(layer:expert:into:)`, split as `readExpert(layer:expert:gateUpArrived:)` says,
    /// with `transferred` as `readExpert(layer:expert:transferred:)` says.
    public func readExpert(layer: Int, expert: Int, into buffer: AlignedBuffer<UInt8>,
                           gateUpArrived: ((StoredExpert) -> Void)?, transferred: () -> Void = {}) throws -> StoredExpert {
        precondition(buffer.count >= expertBufferSize && buffer.alignment >= DirectFileReader.granule,
                     "readExpert needs a \(DirectFileReader.granule)-aligned buffer of at least \(expertBufferSize) bytes")
        let entry = try blob(layer: layer, expert: expert)
        let staging = entry.storedRaw ? buffer : AlignedBuffer<UInt8>(count: Self.roundUp(entry.storedLength), alignment: DirectFileReader.granule, zeroed: false)
        if staging.returnsTo === bufferPool {
            // Only a pool buffer: its unmapping passes through the pool, which unregisters it.
            _ = expertReader.registerTarget(UnsafeMutableRawPointer(staging.pointer), bytes: staging.mappingByteCount)
        }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let injected = faults.readFaults(layer: layer, expert: expert)
        let blobLayout = self.layout(of: entry)
        // A split read goes straight into `buffer` (raw blobs only), so the early matrices view
        // the bytes the whole expert will keep.
        let firstPart = gateUpArrived != nil && splitsReads && entry.storedRaw && entry.storedLength >= splitReadMinimumBytes
            ? gateUpPart(of: blobLayout, storedLength: entry.storedLength) : nil
        var rest: ExpertArrival?
        do {
            try readStored(entry, into: staging.pointer, injecting: injected, firstPart: firstPart) {
                let arrival = ExpertArrival()
                rest = arrival
                let matrices = blobLayout.matrices(at: buffer.pointer, owner: buffer)
                gateUpArrived!(StoredExpert(gate: matrices.gate, up: matrices.up, down: matrices.down, byteCount: buffer.byteCount, rest: arrival))
            }
        } catch {
            rest?.finish(failure: error)
            throw error
        }
        if injected.corrupt {
            // Bit rot between disk and checksum: the check below must refuse the blob.
            staging.pointer[entry.storedLength / 2] ^= 0x5A
        }
        transferred()
        let t1 = DispatchTime.now().uptimeNanoseconds
        let context = "\(url.path): layer \(entry.layer) expert \(entry.expert)"
        do {
            try checkStored(entry, at: staging.pointer)
            try ExpertBlobCodec.decode(staging.pointer, entry: entry, dtype: layout.dtype, into: buffer.pointer, context: context)
        } catch {
            record { $0.checksumFailures += 1 }
            rest?.finish(failure: error)
            throw error
        }
        rest?.finish()
        let t2 = DispatchTime.now().uptimeNanoseconds
        record {
            $0.reads += 1
            $0.bytesRead += Self.roundUp(entry.storedLength)
            $0.rawBytes += entry.rawLength
            $0.readSeconds += Double(t1 - t0) / 1e9
            $0.decodeSeconds += Double(t2 - t1) / 1e9
        }
        let matrices = blobLayout.matrices(at: buffer.pointer, owner: buffer)
        return StoredExpert(gate: matrices.gate, up: matrices.up, down: matrices.down, byteCount: buffer.byteCount,
                            biases: blobLayout.biases(at: buffer.pointer, owner: buffer))
    }

    /// Reads the stored bytes of `entry` (rounded up to 4 KiB) into `destination`, which must
    /// be 4 KiB-aligned and hold `roundUp(entry.storedLength)` bytes.
    public func readStored(_ entry: ExpertBlobEntry, into destination: UnsafeMutableRawPointer) throws {
        try readStored(entry, into: destination, injecting: FaultInjector.ReadFaults())
    }

    /// `readStored` with injected faults: latency first, then an EIO or a read of half the bytes.
    private func readStored(_ entry: ExpertBlobEntry, into destination: UnsafeMutableRawPointer,
                            injecting faults: FaultInjector.ReadFaults, firstPart: Int? = nil,
                            firstPartArrived: () -> Void = {}) throws {
        let length = Self.roundUp(entry.storedLength)
        if faults.latencyMilliseconds > 0 { usleep(useconds_t(faults.latencyMilliseconds * 1000)) }
        if faults.error {
            throw ModelFormatError("\(url.path): layer \(entry.layer) expert \(entry.expert): read of \(length) bytes at offset \(entry.offset) failed: \(String(cString: strerror(EIO))) (injected fault)")
        }
        var got: Int
        do {
            if let firstPart {
                got = try expertReader.read(into: destination, offset: entry.offset, length: length, firstPart: firstPart,
                                            firstPartArrived: firstPartArrived)
            } else {
                got = try expertReader.read(into: destination, offset: entry.offset, length: length)
            }
        } catch {
            throw ModelFormatError("\(url.path): layer \(entry.layer) expert \(entry.expert): \(error)")
        }
        if faults.short { got = min(got, entry.storedLength / 2) }
        guard got >= entry.storedLength else {
            throw ModelFormatError("\(url.path): layer \(entry.layer) expert \(entry.expert): short read (\(got) of \(entry.storedLength) bytes; experts.bin truncated?)")
        }
    }

    /// Throws unless the stored bytes at `bytes` match `entry`'s checksum.
    public func checkStored(_ entry: ExpertBlobEntry, at bytes: UnsafeRawPointer) throws {
        let digest = checksum.digest(bytes, count: entry.storedLength)
        guard digest == entry.checksum else {
            throw ModelFormatError("\(url.path): layer \(entry.layer) expert \(entry.expert): checksum mismatch (stored \(entry.checksum), computed \(digest)); the expert data is corrupt, re-run moe-serve pack")
        }
    }

    /// Reads every blob and checks it (checksum, then a trial decode); returns one line per
    /// problem (empty when the store is sound), dense tensors included. `progress` receives
    /// blobs done and the total.
    public func verify(progress: ((Int, Int) -> Void)? = nil) -> [String] {
        var problems = denseProblems()
        let blobs = manifest.experts.blobs
        let maxStored = blobs.map(\.storedLength).max() ?? 0
        let staging = AlignedBuffer<UInt8>(count: Self.roundUp(maxStored), alignment: DirectFileReader.granule)
        let decoded = AlignedBuffer<UInt8>(count: expertBufferSize, alignment: DirectFileReader.granule)
        for (i, entry) in blobs.enumerated() {
            do {
                try readStored(entry, into: staging.pointer)
                try checkStored(entry, at: staging.pointer)
                if !entry.storedRaw {
                    try ExpertBlobCodec.decode(staging.pointer, entry: entry, dtype: layout.dtype, into: decoded.pointer,
                                               context: "\(url.path): layer \(entry.layer) expert \(entry.expert)")
                }
            } catch {
                problems.append("\(error)") // every error of the three steps names the layer and expert
            }
            progress?(i + 1, blobs.count)
        }
        for copy in manifest.lowBitCopies?.blobs ?? [] {
            do { _ = try readLowBitExpert(layer: copy.layer, expert: copy.expert) } catch { problems.append("low-bit copy: \(error)") }
        }
        return problems
    }

    /// Reads up to `sampleCount` blobs and decodes them from RAM repeatedly for at least
    /// `minimumSeconds`: decoded GB/s of this store's codec (memcpy speed for raw blobs).
    public func measureDecodeThroughput(sampleCount: Int = 8, minimumSeconds: Double = 0.3) throws -> Double {
        let blobs = manifest.experts.blobs
        guard !blobs.isEmpty else { return 0 }
        let step = max(1, blobs.count / sampleCount)
        let chosen = stride(from: 0, to: blobs.count, by: step).prefix(sampleCount).map { blobs[$0] }
        let stored = try chosen.map { entry -> AlignedBuffer<UInt8> in
            let buffer = AlignedBuffer<UInt8>(count: Self.roundUp(entry.storedLength), alignment: DirectFileReader.granule)
            try readStored(entry, into: buffer.pointer)
            try checkStored(entry, at: buffer.pointer)
            return buffer
        }
        let out = AlignedBuffer<UInt8>(count: expertBufferSize, alignment: DirectFileReader.granule)
        var bytes = 0
        let start = DispatchTime.now().uptimeNanoseconds
        var seconds = 0.0
        repeat {
            for (entry, buffer) in zip(chosen, stored) {
                try ExpertBlobCodec.decode(buffer.pointer, entry: entry, dtype: layout.dtype, into: out.pointer, context: "decode benchmark")
                bytes += entry.rawLength
            }
            seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        } while seconds < minimumSeconds
        return Double(bytes) / seconds / 1e9
    }

    /// Counters since the store was opened.
    public var statistics: ExpertStoreStatistics {
        lock.lock(); defer { lock.unlock() }
        return counters
    }

    private func record(_ update: (inout ExpertStoreStatistics) -> Void) {
        lock.lock(); defer { lock.unlock() }
        update(&counters)
    }
}
