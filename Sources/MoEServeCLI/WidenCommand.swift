import ArgumentParser
import Foundation
import InferenceEngine
import ModelFormats
import MoEModels

/// `moe-serve widen STORE OUT --expert-width N`: the same model with larger experts (inert
/// zero units appended), so a trained model's routing can be measured on experts large
/// enough that reading them costs as much as computing with them (docs/PREDICTOR.md).
struct WidenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "widen",
        abstract: "Write a copy of a store whose experts are widened with inert units (same outputs, larger experts; for benchmarks).",
        discussion: "Zero rows of gate/up and zero columns of down leave every logit unchanged, so routing stays the trained model's while each expert costs width/w times the bytes to read and multiply.")

    @Argument(help: "The expert store to widen (default: the bundled demo model).") var store: String?
    @Option(help: "The expert store to create (must not exist).") var out: String
    @Option(name: .customLong("expert-width"), help: "The new width of every routed expert (at least the current one; a multiple of 32 for q4).")
    var expertWidth: Int
    @Option(help: "Expert element type of the new store (default: the source store's).") var experts: ExpertDType?
    @Option(help: "Expert blob compression: none or lz4 (the zero units compress, which would hide the reads this model exists to measure).")
    var compression: ExpertCodec = .none

    struct Output: Encodable {
        var store: String
        var expertWidth: Int
        var expertDtype: String
        var bytesPerExpert: Int
        var expertStoreBytes: Int
        enum CodingKeys: String, CodingKey {
            case store, expertWidth = "expert_width", expertDtype = "expert_dtype"
            case bytesPerExpert = "bytes_per_expert", expertStoreBytes = "expert_store_bytes"
        }
    }

    func run() throws {
        try reportingErrors {
            guard let source = store.map({ URL(fileURLWithPath: $0) }) ?? BundledModel.location else {
                throw CommandError("no store given and the bundled demo model was not found")
            }
            guard ExpertStore.isStore(at: source) else { throw CommandError("\(source.path): not an expert store (see moe-serve pack)") }
            let destination = URL(fileURLWithPath: out)
            let fm = FileManager.default
            guard !fm.fileExists(atPath: destination.path) else { throw CommandError("\(out): already exists; widen never overwrites") }
            let sourceStore = try ExpertStore(url: source)
            let dtype = experts ?? sourceStore.layout.dtype
            if dtype == .ggml { throw CommandError("\(source.path): the store keeps GGUF blocks (ggml); pass --experts bf16, f32, int8 or q4 for the widened store") }
            if dtype == .q4 && expertWidth % 32 != 0 { throw CommandError("--expert-width: q4 needs a multiple of 32, got \(expertWidth)") }

            // The intermediate checkpoint holds experts as float32: refuse up front rather than fill the disk.
            let config = sourceStore.config
            let expertCount = config.moeLayers.count * config.expertCount
            let checkpointBytes = expertCount * 3 * expertWidth * config.hiddenSize * 4 + sourceStore.manifest.dense.fileSize * 2
            let storeBytes = Int(Double(sourceStore.manifest.experts.fileSize) * Double(expertWidth) / Double(config.expertIntermediateSize))
                + sourceStore.manifest.dense.fileSize
            let parent = destination.deletingLastPathComponent().path
            if let free = (try? fm.attributesOfFileSystem(forPath: parent))?[.systemFreeSize] as? Int, free < checkpointBytes + storeBytes {
                throw CommandError("\(parent): \(formatBytes(free)) free, but widening needs about \(formatBytes(checkpointBytes + storeBytes)) (a float32 checkpoint of \(formatBytes(checkpointBytes)), removed afterwards, and the store)")
            }
            let checkpoint = URL(fileURLWithPath: out + ".hf-partial")
            try? fm.removeItem(at: checkpoint)
            defer { try? fm.removeItem(at: checkpoint) }
            let progress = ProgressLine()
            var lastReport = 0.0
            printError("widen: \(source.path) experts \(sourceStore.config.expertIntermediateSize) -> \(expertWidth) units")
            try ExpertWidening.writeCheckpoint(of: sourceStore, width: expertWidth, to: checkpoint) { p in
                let now = Date().timeIntervalSince1970
                guard p.expertsDone == p.expertsTotal || now - lastReport > 1 else { return }
                lastReport = now
                progress.show("widen: \(p.expertsDone) / \(p.expertsTotal) experts")
            }
            progress.finish()
            let summary = try packCheckpoint(at: checkpoint, into: destination, experts: dtype, compression: compression)
            try printJSON(Output(store: out, expertWidth: expertWidth, expertDtype: dtype.rawValue,
                                 bytesPerExpert: summary.manifest.experts.blobs.first?.rawLength ?? 0,
                                 expertStoreBytes: summary.expertStoredBytes))
        }
    }
}
