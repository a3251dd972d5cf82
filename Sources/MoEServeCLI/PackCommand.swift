import ArgumentParser
import Foundation
import ModelFormats
import MoEModels

extension ExpertDType: ExpressibleByArgument {}
extension ExpertCodec: ExpressibleByArgument {}
extension DenseEncoding: ExpressibleByArgument {}
extension LowBitKind: ExpressibleByArgument {}

/// `moe-serve pack HF_DIR STORE_DIR`: writes an expert store (see docs/STORE.md).
struct PackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pack",
        abstract: "Pack a Hugging Face checkpoint or a GGUF file into an expert store (dense.bin, experts.bin, manifest.json).")

    @Argument(help: "The Hugging Face model directory, or a GGUF file (its ggml blocks are kept bit for bit).") var checkpoint: String
    @Argument(help: "The store directory to create (must not exist).") var store: String
    @Option(help: "Expert element type: bf16, f32, int8, q4 or mxfp4 (default: mxfp4 for MXFP4 checkpoints, else bf16).")
    var experts: ExpertDType?
    @Option(help: "Expert blob compression: none or lz4.") var compression: ExpertCodec = .none
    @Option(help: "Dense matrices (attention, shared experts, embeddings, LM head; routers stay as they are): bf16 (as in the checkpoint), q8 or q4.")
    var dense: DenseEncoding = .bf16
    @Option(name: .customLong("lz4hc-level"), help: "LZ4-HC level tried after fast LZ4 (0: fast LZ4 only; 9: ~1.2x smaller exponent planes, ~7x slower packing).")
    var lz4hcLevel: Int32 = ExpertBlobCodec.defaultHighCompressionLevel
    @Option(name: .customLong("low-bit-copies"), help: "Also store a low-bit copy of every expert for --low-bit-misses: q2 (Q2_K; docs/LOSSY.md). Default: none.")
    var lowBitCopies: LowBitKind?

    struct Output: Encodable {
        var store: String
        var expertDtype: String
        var compression: String
        var blobs: Int
        var sourceBytes: Int
        var expertRawBytes: Int
        var expertStoredBytes: Int
        var compressionRatio: Double
        var seconds: Double
        var megabytesPerSecond: Double
        enum CodingKeys: String, CodingKey {
            case store, blobs, seconds, compression
            case expertDtype = "expert_dtype", sourceBytes = "source_bytes", expertRawBytes = "expert_raw_bytes"
            case expertStoredBytes = "expert_stored_bytes", compressionRatio = "compression_ratio"
            case megabytesPerSecond = "mb_per_second"
        }
    }

    func run() throws {
        try reportingErrors {
            let summary = try packCheckpoint(at: URL(fileURLWithPath: checkpoint), into: URL(fileURLWithPath: store),
                                             experts: experts, compression: compression, lz4hcLevel: lz4hcLevel, dense: dense)
            if let lowBitCopies { try addLowBitCopies(lowBitCopies, to: URL(fileURLWithPath: store)) }
            try printJSON(Output(
                store: store, expertDtype: summary.manifest.experts.dtype.rawValue, compression: compression.rawValue,
                blobs: summary.manifest.experts.blobs.count, sourceBytes: summary.sourceBytes,
                expertRawBytes: summary.expertRawBytes, expertStoredBytes: summary.expertStoredBytes,
                compressionRatio: Double(summary.expertRawBytes) / Double(max(summary.expertStoredBytes, 1)),
                seconds: summary.seconds, megabytesPerSecond: Double(summary.sourceBytes) / max(summary.seconds, 1e-9) / 1e6))
        }
    }
}

/// Packs the checkpoint at `source` into a new store at `destination`, with progress on stderr.
func packCheckpoint(at source: URL, into destination: URL, experts requested: ExpertDType?, compression: ExpertCodec,
                    lz4hcLevel: Int32 = ExpertBlobCodec.defaultHighCompressionLevel, dense: DenseEncoding = .bf16) throws -> ExpertStorePacker.Summary {
    if GGUFModel.isGGUF(at: source) {
        return try packGGUF(at: source, into: destination, experts: requested, compression: compression, lz4hcLevel: lz4hcLevel, dense: dense)
    }
    let checkpoint = try CheckpointDirectory(url: source)
    let names = ArchitectureDescription.of(checkpoint.config.architecture)
    let fused = try FusedExpertReader.of(checkpoint, description: names)
    // MXFP4 checkpoints stay 4-bit unless asked otherwise.
    let mxfp4 = checkpoint.config.moeLayers.first.map { fused?.isMXFP4(layer: $0) ?? false } ?? false
    let experts = requested ?? (mxfp4 ? .mxfp4 : .bf16)
    if mxfp4 && (experts == .int8 || experts == .q4) {
        printError("note: the checkpoint's experts are MXFP4; --experts \(experts.rawValue) re-quantizes them (mxfp4, bf16 and f32 are exact)")
    }
    if experts == .bf16, fused == nil, let first = checkpoint.config.moeLayers.first,
       let dtype = try? checkpoint.entry(names.expertTensorNames(first, 0).gate).0.dtype, dtype != .bf16 {
        printError("note: the checkpoint's experts are \(dtype.rawValue); --experts bf16 rounds them (use --experts f32 for an exact store)")
    }
    var packer = ExpertStorePacker()
    packer.dtype = experts
    packer.warn = { printError($0) }
    packer.fusedExperts = fused
    packer.codec = compression
    packer.compressionLevel = lz4hcLevel
    packer.dense = dense
    // Ctrl-C or a kill mid-pack: remove the temporary directory before exiting (it never
    // looks like a store, but it can be large).
    let interruption = PackInterruption()
    packer.onTemporaryDirectory = { interruption.watch($0) }
    let progress = ProgressLine()
    packer.progress = { p in
        progress.show(String(format: "pack: %.1f / %.1f MB, %.0f MB/s, ETA %.0f s", Double(p.bytesDone) / 1e6,
                             Double(p.bytesTotal) / 1e6, p.rate / 1e6, p.eta))
    }
    let summary = try packer.pack(checkpoint: checkpoint, expertTensorNames: { layer, expert in
        let n = names.expertTensorNames(layer, expert)
        return [n.gate, n.up, n.down]
    }, to: destination)
    progress.finish()
    printError(String(format: "packed %d experts into %@ in %.1f s (%.0f MB/s)", summary.manifest.experts.blobs.count, destination.path,
                      summary.seconds, Double(summary.sourceBytes) / max(summary.seconds, 1e-9) / 1e6))
    return summary
}

/// Packs the GGUF model at `source` (a split one by its first part): its ggml blocks kept bit
/// for bit, per-expert blobs sliced from the stacked expert tensors.
func packGGUF(at source: URL, into destination: URL, experts requested: ExpertDType?, compression: ExpertCodec,
              lz4hcLevel: Int32, dense: DenseEncoding) throws -> ExpertStorePacker.Summary {
    if let requested, requested != .ggml {
        throw CommandError("\(source.path): a GGUF file keeps its own ggml types in the store (bit for bit); --experts \(requested.rawValue) would re-quantize them: omit --experts")
    }
    let gguf = try GGUFModel(url: source)
    var packer = ExpertStorePacker()
    packer.dtype = .ggml
    packer.codec = compression
    packer.compressionLevel = lz4hcLevel
    packer.dense = dense
    packer.warn = { printError($0) }
    let interruption = PackInterruption()
    packer.onTemporaryDirectory = { interruption.watch($0) }
    let progress = ProgressLine()
    packer.progress = { p in
        progress.show(String(format: "pack: %.1f / %.1f MB, %.0f MB/s, ETA %.0f s", Double(p.bytesDone) / 1e6,
                             Double(p.bytesTotal) / 1e6, p.rate / 1e6, p.eta))
    }
    let summary = try packer.pack(gguf: gguf, to: destination)
    progress.finish()
    let types = Set(summary.manifest.experts.blobs.compactMap(\.ggmlTypes).flatMap { $0 }).sorted()
    printError(String(format: "packed %d experts (ggml types %@) into %@ in %.1f s (%.0f MB/s)", summary.manifest.experts.blobs.count,
                      types.joined(separator: ", "), destination.path, summary.seconds,
                      Double(summary.sourceBytes) / max(summary.seconds, 1e-9) / 1e6))
    return summary
}

/// A progress line on stderr: rewritten in place on a terminal, one line per update otherwise
/// (so logs of long jobs stay readable).
struct ProgressLine: Sendable {
    let interactive = isatty(STDERR_FILENO) != 0
    func show(_ line: String) { FileHandle.standardError.write(Data((interactive ? "\r\(line)  " : "\(line)\n").utf8)) }
    /// Ends the rewritten line on a terminal.
    func finish() { if interactive { FileHandle.standardError.write(Data("\n".utf8)) } }
}

/// Writes one line to stderr.
func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

/// Removes a pack's temporary directory when SIGINT or SIGTERM arrives, then exits.
private final class PackInterruption: @unchecked Sendable {
    private var sources: [DispatchSourceSignal] = []

    func watch(_ temporary: URL) {
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                try? FileManager.default.removeItem(at: temporary)
                FileHandle.standardError.write(Data("\npack interrupted; removed \(temporary.path)\n".utf8))
                exit(130)
            }
            source.resume()
            sources.append(source)
        }
    }
}
