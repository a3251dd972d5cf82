import Foundation
import TensorMath

/// Writes an expert store from a Hugging Face checkpoint directory:
///
/// ```
/// STORE/manifest.json   format version, config, dense index, one entry per routed expert
/// STORE/dense.bin       every non-expert tensor in its checkpoint dtype, 64-byte aligned
/// STORE/experts.bin     one blob per routed expert (gate, up, down), each at a 4 KiB boundary
/// STORE/config.json, tokenizer.json, ...   copied from the checkpoint
/// ```
///
/// Everything is written into `STORE.tmp-XXXXXXXX` next to the destination and renamed at the
/// end, manifest last; any failure removes the temporary directory, so an interrupted or failed
/// pack never leaves anything that looks like a store.
public struct ExpertStorePacker {
    /// Progress of a running pack, reported a few times a second.
    public struct Progress: Sendable {
        /// Checkpoint bytes processed so far.
        public var bytesDone: Int
        /// Checkpoint bytes to process.
        public var bytesTotal: Int
        /// Seconds since the pack started.
        public var seconds: Double
        /// Bytes per second so far.
        public var rate: Double { seconds > 0 ? Double(bytesDone) / seconds : 0 }
        /// Estimated seconds left.
        public var eta: Double { rate > 0 ? Double(bytesTotal - bytesDone) / rate : 0 }
    }

    /// What a finished pack produced.
    public struct Summary: Sendable {
        /// The manifest written.
        public var manifest: ExpertStoreManifest
        /// Checkpoint bytes read.
        public var sourceBytes: Int
        /// Sum of the blobs' decoded lengths.
        public var expertRawBytes: Int
        /// Sum of the blobs' stored lengths (before alignment padding).
        public var expertStoredBytes: Int
        /// Wall time.
        public var seconds: Double
    }

    /// Expert element encoding.
    public var dtype: ExpertDType = .bf16
    /// Blob compression.
    public var codec: ExpertCodec = .none
    /// Dense matrices: as in the checkpoint, or quantised (see `DenseEncoding`).
    public var dense: DenseEncoding = .bf16
    /// LZ4-HC level tried after fast LZ4 (0: fast LZ4 only).
    public var compressionLevel: Int32 = ExpertBlobCodec.defaultHighCompressionLevel
    /// Receives progress at most every `progressInterval` seconds, and once at the end.
    public var progress: ((Progress) -> Void)?
    /// Seconds between progress reports.
    public var progressInterval = 0.25
    /// Test hook: throw after writing this many expert blobs (simulates a crash mid-pack).
    public var failAfterBlobs: Int?
    /// Faults injected into the writes (`enospc_after`; failure testing, `MOE_FAULTS` by default).
    public var faults: FaultInjector = .shared
    /// Told the temporary directory as soon as it exists, so that a signal handler can remove
    /// it if the process is interrupted.
    public var onTemporaryDirectory: ((URL) -> Void)?

    /// Reads experts stored fused per layer (gpt-oss: bf16 or MXFP4, with biases); set for such
    /// checkpoints (`FusedExpertReader.of`), whose experts are then taken from it rather than
    /// by `expertTensorNames`.
    public var fusedExperts: FusedExpertReader?

    /// Receives warnings (a q4 matrix kept in int8 because 32 does not divide its width).
    public var warn: ((String) -> Void)?

    /// A packer with the default options (bf16, no compression).
    public init() {}

    /// Packs `checkpoint` into a new directory `destination`. `expertTensorNames(layer, expert)`
    /// gives the gate, up and down tensor names of a routed expert (architecture-specific; the
    /// packer does not depend on the model code).
    public func pack(checkpoint: CheckpointDirectory, expertTensorNames: (Int, Int) -> [String], to destination: URL) throws -> Summary {
        guard dtype != .ggml else {
            throw ModelFormatError("--experts ggml keeps a GGUF file's blocks; pack a .gguf file for it, or choose bf16, f32, int8, q4 or mxfp4")
        }
        return try publish(to: destination) { temporary in
            try write(checkpoint: checkpoint, moeLayers: checkpoint.config.moeLayers, expertCount: checkpoint.config.expertCount,
                      expertTensorNames: expertTensorNames, into: temporary)
        }
    }

    /// Runs `write` into a new temporary directory next to `destination` and renames it into
    /// place; removes it on any error.
    func publish(to destination: URL, _ write: (URL) throws -> Summary) throws -> Summary {
        let fileManager = FileManager.default
        let destination = destination.standardizedFileURL
        if fileManager.fileExists(atPath: destination.path) {
            throw ModelFormatError.file(destination.path, "already exists; remove it or choose another output directory")
        }
        let parent = destination.deletingLastPathComponent()
        var isDirectory: ObjCBool = false
        guard fileManager.fileExists(atPath: parent.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ModelFormatError.file(parent.path, "output parent directory does not exist")
        }
        let start = DispatchTime.now().uptimeNanoseconds
        let suffix = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        let temporary = parent.appendingPathComponent("\(destination.lastPathComponent).tmp-\(suffix)")
        do {
            try fileManager.createDirectory(at: temporary, withIntermediateDirectories: false)
        } catch {
            throw ModelFormatError.file(temporary.path, "cannot create: \(error.localizedDescription)")
        }
        onTemporaryDirectory?(temporary)
        do {
            var summary = try write(temporary)
            guard rename(temporary.path, destination.path) == 0 else {
                throw ModelFormatError.file(destination.path, "cannot rename \(temporary.lastPathComponent) into place: \(String(cString: strerror(errno)))")
            }
            summary.seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            return summary
        } catch {
            try? fileManager.removeItem(at: temporary)
            throw error
        }
    }

    private func write(checkpoint: CheckpointDirectory, moeLayers: [Int], expertCount: Int,
                       expertTensorNames: (Int, Int) -> [String], into directory: URL) throws -> Summary {
        let start = DispatchTime.now().uptimeNanoseconds
        func elapsed() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }

        // Partition the checkpoint into routed-expert tensors and everything else.
        var expertNames: [[[String]]] = [] // [moe layer][expert] -> gate, up, down
        var isExpertTensor = Set<String>()
        for layer in moeLayers {
            if let fusedExperts {
                let names = fusedExperts.tensorNames(layer: layer)
                isExpertTensor.formUnion(names)
                expertNames.append([[String]](repeating: names, count: expertCount))
                continue
            }
            expertNames.append(try (0..<expertCount).map { expert in
                let names = expertTensorNames(layer, expert)
                for name in names {
                    guard checkpoint.contains(name) else {
                        throw ModelFormatError.tensor(name, in: checkpoint.url.path, "routed expert tensor (layer \(layer), expert \(expert)) is missing from the checkpoint")
                    }
                    isExpertTensor.insert(name)
                }
                return names
            })
        }
        // Float8 block scales are folded into their weights, not stored. Layers past num_hidden_layers
        // (DeepSeek-V3's multi-token prediction layer) and tensors the architecture never reads
        // (Qwen3-Next's `mtp.` head) are left out.
        let unused = checkpoint.config.architecture.definition
        func isPacked(_ name: String) -> Bool {
            !checkpoint.isFP8Scale(name) && !checkpoint.isBeyondLastLayer(name) && !unused.isUnusedTensor(name)
        }
        let denseNames = checkpoint.tensorNames.filter { !isExpertTensor.contains($0) && isPacked($0) }
        var totalBytes = 0
        for name in checkpoint.tensorNames where isPacked(name) {
            totalBytes += try checkpoint.entry(name).0.byteCount
        }

        var done = 0
        var lastReport = -Double.infinity
        func report(force: Bool = false) {
            guard let progress else { return }
            let now = elapsed()
            if force || now - lastReport >= progressInterval {
                lastReport = now
                progress(Progress(bytesDone: done, bytesTotal: totalBytes, seconds: now))
            }
        }

        // Float32 staging for the tensors that are re-encoded (dense matrices and experts).
        var scratch = AlignedBuffer<Float>(count: 0)

        // dense.bin
        let denseWriter = try BinaryFileWriter(url: directory.appendingPathComponent("dense.bin"), faults: faults)
        var denseEntries: [DenseTensorEntry] = []
        for name in denseNames {
            let (entry, file) = try checkpoint.entry(name)
            try denseWriter.pad(to: 64)
            let offset = denseWriter.offset
            if dense.quantises(name, shape: entry.shape), let type = dense.elementType {
                let (rows, cols) = (entry.shape[0], entry.shape[1])
                if scratch.count < rows * cols { scratch = AlignedBuffer<Float>(count: rows * cols) }
                if entry.dtype == .f8e4m3 {
                    try checkpoint.dequantize(name, into: scratch.pointer)
                } else {
                    CheckpointDirectory.widen(file.bytes(of: entry), dtype: entry.dtype, into: scratch.pointer, count: rows * cols)
                }
                let length = DenseEncoding.layout(type, rows: rows, cols: cols).length
                let encoded = AlignedBuffer<UInt8>(count: length, alignment: 64) // zeroed: the padding is written
                DenseEncoding.encode(scratch.pointer, rows: rows, cols: cols, as: type, into: encoded.pointer)
                let bytes = UnsafeRawBufferPointer(start: encoded.pointer, count: length)
                try denseWriter.write(bytes)
                denseEntries.append(DenseTensorEntry(name: name, dtype: entry.dtype == .f8e4m3 ? .bf16 : entry.dtype, shape: entry.shape,
                                                     offset: offset, length: length, checksum: StoreChecksum.packDefault.digest(bytes),
                                                     quantized: type))
            } else if entry.dtype == .f8e4m3 {
                // Float8 dense weights are stored dequantized, as bf16 (one tensor in RAM at a time).
                let count = entry.elementCount
                let widened = AlignedBuffer<Float>(count: count)
                try checkpoint.dequantize(name, into: widened.pointer)
                let narrowed = AlignedBuffer<UInt16>(count: count)
                for i in 0..<count { narrowed.pointer[i] = FloatConversion.bf16(from: widened.pointer[i]) }
                let bytes = UnsafeRawBufferPointer(start: narrowed.pointer, count: count * 2)
                try denseWriter.write(bytes)
                denseEntries.append(DenseTensorEntry(name: name, dtype: .bf16, shape: entry.shape, offset: offset,
                                                     length: count * 2, checksum: StoreChecksum.packDefault.digest(bytes)))
            } else {
                let source = file.bytes(of: entry)
                try denseWriter.write(source)
                denseEntries.append(DenseTensorEntry(name: name, dtype: entry.dtype, shape: entry.shape, offset: offset,
                                                     length: entry.byteCount, checksum: StoreChecksum.packDefault.digest(source)))
            }
            done += entry.byteCount
            report()
        }
        try denseWriter.finish()

        // experts.bin
        let alignment = DirectFileReader.granule
        let expertWriter = try BinaryFileWriter(url: directory.appendingPathComponent("experts.bin"), faults: faults)
        var blobs: [ExpertBlobEntry] = []
        var shapes: [[Int]] = []
        var layout: ExpertBlobLayout?
        var rawTotal = 0, storedTotal = 0
        /// Encodes, writes and records one expert's blob.
        func writeBlob(_ raw: AlignedBuffer<UInt8>, layer: Int, expert: Int) throws {
            let layout = layout!
            let encoded = ExpertBlobCodec.encode(raw, rawLength: layout.rawLength, dtype: dtype, codec: codec, level: compressionLevel)
            try expertWriter.pad(to: alignment)
            let offset = expertWriter.offset
            let stored = UnsafeRawBufferPointer(start: encoded.bytes.pointer, count: encoded.length)
            try expertWriter.write(stored)
            blobs.append(ExpertBlobEntry(layer: layer, expert: expert, offset: offset, storedLength: encoded.length,
                                         rawLength: layout.rawLength, checksum: StoreChecksum.packDefault.digest(stored),
                                         storedRaw: encoded.storedRaw, planes: encoded.planes))
            rawTotal += layout.rawLength
            storedTotal += encoded.length
            report()
            if let failAfterBlobs, blobs.count >= failAfterBlobs {
                throw ModelFormatError("pack interrupted after \(blobs.count) blobs (test hook)")
            }
        }
        for (layerIndex, layer) in moeLayers.enumerated() {
            for expert in 0..<expertCount {
                if let fusedExperts {
                    let weights = try fusedExperts.expert(layer: layer, expert: expert)
                    let theseShapes = [weights.gate, weights.up, weights.down].map { [$0.rows, $0.cols] }
                    if layout == nil {
                        shapes = theseShapes
                        layout = try ExpertBlobLayout(dtype: dtype, gateShape: shapes[0], upShape: shapes[1], downShape: shapes[2],
                                                      biases: weights.biases != nil)
                        warnAboutFallbacks(layout!)
                    }
                    let raw = AlignedBuffer<UInt8>(count: layout!.rawLength, alignment: alignment)
                    for (matrix, path) in zip([weights.gate, weights.up, weights.down], [\ExpertBlobLayout.gate, \.up, \.down]) {
                        try Self.encode(matrix, at: path, layout: layout!, into: raw.pointer, scratch: &scratch)
                    }
                    if let biases = weights.biases { layout!.encode(biases: biases, into: raw.pointer) }
                    done += weights.byteCount
                    try writeBlob(raw, layer: layer, expert: expert)
                    continue
                }
                let names = expertNames[layerIndex][expert]
                let entries = try names.map { try checkpoint.entry($0) }
                let theseShapes = entries.map(\.0.shape)
                if layout == nil {
                    shapes = theseShapes
                    layout = try ExpertBlobLayout(dtype: dtype, gateShape: shapes[0], upShape: shapes[1], downShape: shapes[2])
                    warnAboutFallbacks(layout!)
                }
                guard theseShapes == shapes else {
                    throw ModelFormatError("layer \(layer) expert \(expert): shapes \(theseShapes) differ from the first expert's \(shapes)")
                }
                let layout = layout!
                let raw = AlignedBuffer<UInt8>(count: layout.rawLength, alignment: alignment) // zeroed: padding is written
                for (matrixIndex, path) in [\ExpertBlobLayout.gate, \.up, \.down].enumerated() {
                    let (entry, file) = entries[matrixIndex]
                    let source = file.bytes(of: entry)
                    let target = layout[keyPath: path]
                    if (dtype == .bf16 && entry.dtype == .bf16) || (dtype == .f32 && entry.dtype == .f32) {
                        // Same encoding: copy the bits, so the store is exact.
                        UnsafeMutableRawPointer(raw.pointer + target.dataOffset).copyMemory(from: source.baseAddress!, byteCount: entry.byteCount)
                    } else {
                        let count = entry.elementCount
                        if scratch.count < count { scratch = AlignedBuffer<Float>(count: count) }
                        if entry.dtype == .f8e4m3 {
                            try checkpoint.dequantize(names[matrixIndex], into: scratch.pointer)
                        } else {
                            CheckpointDirectory.widen(source, dtype: entry.dtype, into: scratch.pointer, count: count)
                        }
                        layout.encode(path, from: scratch.pointer, into: raw.pointer)
                    }
                    done += entry.byteCount
                }
                try writeBlob(raw, layer: layer, expert: expert)
            }
        }
        // Pad the end too, so an aligned O_DIRECT read of the last blob stays inside the file.
        try expertWriter.pad(to: alignment)
        try expertWriter.finish()

        // Tokenizer, config, the predictor's probes and any other small files travel with the
        // store; the weights (every other safetensors file) are what it repacks.
        var copied: [String] = []
        let fileManager = FileManager.default
        let contents = (try? fileManager.contentsOfDirectory(atPath: checkpoint.url.path)) ?? []
        let travelling = contents.filter {
            (!$0.hasSuffix(".safetensors") || $0 == ExpertStore.predictorProbesFile || $0 == ExpertStore.expertSurrogatesFile) && $0 != "model.safetensors.index.json" && !$0.hasPrefix(".")
        }
        for name in travelling.sorted() {
            let source = checkpoint.url.appendingPathComponent(name)
            var isDirectory: ObjCBool = false
            guard fileManager.fileExists(atPath: source.path, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
            do { try fileManager.copyItem(at: source, to: directory.appendingPathComponent(name)) } catch {
                throw ModelFormatError.file(source.path, "cannot copy into the store: \(error.localizedDescription)")
            }
            copied.append(name)
        }

        let configData: Data
        do { configData = try Data(contentsOf: checkpoint.url.appendingPathComponent("config.json")) } catch {
            throw ModelFormatError.file(checkpoint.url.appendingPathComponent("config.json").path, "cannot read: \(error.localizedDescription)")
        }
        let configJSON: JSONValue
        do { configJSON = try JSONValue.parse([UInt8](configData)) } catch {
            throw ModelFormatError.file(checkpoint.url.appendingPathComponent("config.json").path, "\(error)")
        }
        let manifest = ExpertStoreManifest(
            format: ExpertStoreManifest.formatName,
            // Version 5: CRC-32C checksums (`StoreChecksum`), which builds before session 33 cannot check.
            formatVersion: 5,
            architecture: checkpoint.config.architecture.rawValue,
            config: configJSON,
            experts: .init(file: "experts.bin", fileSize: expertWriter.offset, dtype: dtype, codec: codec, alignment: alignment,
                           gateShape: shapes.first ?? [], upShape: shapes.count > 1 ? shapes[1] : [],
                           downShape: shapes.count > 2 ? shapes[2] : [],
                           exampleTensorNames: expertNames.first?.first ?? [],
                           biases: layout?.biasOffsets != nil ? true : nil, blobs: blobs),
            dense: .init(file: "dense.bin", fileSize: denseWriter.offset, tensors: denseEntries),
            copiedFiles: copied,
            checksumAlgorithm: StoreChecksum.packDefault.rawValue)
        // The manifest goes last: its presence marks a complete store.
        let manifestWriter = try BinaryFileWriter(url: directory.appendingPathComponent(ExpertStoreManifest.fileName), faults: faults)
        let manifestData = try manifest.encoded()
        try manifestData.withUnsafeBytes { try manifestWriter.write($0) }
        try manifestWriter.finish()
        report(force: true)
        return Summary(manifest: manifest, sourceBytes: totalBytes, expertRawBytes: rawTotal, expertStoredBytes: storedTotal, seconds: elapsed())
    }
}

extension ExpertStorePacker {
    /// Tells `warn` which q4 matrices fall back to int8 (llama-quantize does the same for
    /// tensors whose width is not a whole number of its blocks).
    func warnAboutFallbacks(_ layout: ExpertBlobLayout) {
        let fallbacks = layout.int8Fallbacks
        guard !fallbacks.isEmpty else { return }
        warn?("warning: q4 needs input widths that are multiples of \(Quantization.q4BlockSize); the expert matrices \(fallbacks.joined(separator: ", ")) are stored as int8 instead (as llama-quantize falls back)")
    }

    /// Encodes `matrix` into its place `path` of the blob at `base`: its bits when its storage
    /// is the store's dtype (bf16, f32, MXFP4: exact), else widened to float32 and encoded.
    static func encode(_ matrix: WeightMatrix, at path: KeyPath<ExpertBlobLayout, ExpertBlobLayout.Matrix>, layout: ExpertBlobLayout,
                       into base: UnsafeMutablePointer<UInt8>, scratch: inout AlignedBuffer<Float>) throws {
        let target = layout[keyPath: path]
        let destination = UnsafeMutableRawPointer(base + target.dataOffset)
        switch (matrix.storage, layout.dtype) {
        case (.bf16(let w), .bf16): destination.copyMemory(from: w, byteCount: matrix.byteCount)
        case (.f32(let w), .f32): destination.copyMemory(from: w, byteCount: matrix.byteCount)
        case (.mxfp4(let blocks), .mxfp4): destination.copyMemory(from: blocks, byteCount: matrix.byteCount)
        default:
            let count = matrix.rows * matrix.cols
            if scratch.count < count { scratch = AlignedBuffer<Float>(count: count) }
            for r in 0..<matrix.rows {
                matrix.row(r).withUnsafeBufferPointer { (scratch.pointer + r * matrix.cols).update(from: $0.baseAddress!, count: matrix.cols) }
            }
            layout.encode(path, from: scratch.pointer, into: base)
        }
    }
}

/// Sequential writes to a new file with errors that say what ran out (disk space above all).
final class BinaryFileWriter {
    let url: URL
    private let fd: Int32
    /// Bytes written so far.
    private(set) var offset = 0
    private static let zeros = [UInt8](repeating: 0, count: 4096)

    private let faults: FaultInjector

    init(url: URL, faults: FaultInjector) throws {
        self.url = url
        self.faults = faults
        fd = open(url.path, O_WRONLY | O_CREAT | O_EXCL, 0o644)
        guard fd >= 0 else { throw ModelFormatError.file(url.path, "cannot create: \(String(cString: strerror(errno)))") }
    }

    deinit { close(fd) }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard let base = bytes.baseAddress else { return }
        var done = 0
        while done < bytes.count {
            let allowed = faults.allowedWrite(bytes.count - done)
            let n = allowed > 0 ? Foundation.write(fd, base + done, allowed) : -1
            var injected = false
            if allowed == 0 { errno = ENOSPC; injected = true }
            if n < 0 {
                if errno == EINTR { continue }
                var reason = errno == ENOSPC ? "out of disk space" : String(cString: strerror(errno))
                if injected { reason += " (injected fault)" }
                throw ModelFormatError.file(url.path, "write failed after \(offset + done) bytes: \(reason)")
            }
            done += n
        }
        offset += bytes.count
    }

    /// Writes zeros up to the next multiple of `alignment`.
    func pad(to alignment: Int) throws {
        let padding = (alignment - offset % alignment) % alignment
        if padding > 0 { try Self.zeros.withUnsafeBytes { try write(UnsafeRawBufferPointer(rebasing: $0[0..<padding])) } }
    }

    /// Flushes to disk so that the rename publishes complete files.
    func finish() throws {
        guard fsync(fd) == 0 else {
            let reason = errno == ENOSPC ? "out of disk space" : String(cString: strerror(errno))
            throw ModelFormatError.file(url.path, "flush failed: \(reason)")
        }
    }
}
