import ArgumentParser
import Foundation
import ModelFormats
import MoEModels

/// `moe-serve export STORE --out DIR`: a packed store back as a Hugging Face checkpoint,
/// experts dequantized to float32, so that transformers can run exactly the weights users get
/// (how `scripts/perplexity_reference.py` checks `moe-serve perplexity` on the demo model).
struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write an expert store as a Hugging Face checkpoint (dense tensors as stored, experts dequantized to float32).")

    @Argument(help: "The expert store to export (default: the bundled demo model).") var store: String?
    @Option(help: "The checkpoint directory to create (must not exist).") var out: String

    func run() throws {
        try reportingErrors {
            guard let source = store.map({ URL(fileURLWithPath: $0) }) ?? BundledModel.location else {
                throw CommandError("no store given and the bundled demo model was not found")
            }
            guard ExpertStore.isStore(at: source) else { throw CommandError("\(source.path): not an expert store (see moe-serve pack)") }
            guard !FileManager.default.fileExists(atPath: out) else { throw CommandError("\(out): already exists; export never overwrites") }
            let sourceStore = try ExpertStore(url: source)
            // Widening to the current width appends no units: the store's own weights, dequantized.
            try ExpertWidening.writeCheckpoint(of: sourceStore, width: sourceStore.config.expertIntermediateSize,
                                               to: URL(fileURLWithPath: out))
            try printJSON(["checkpoint": out, "expert_dtype_stored": sourceStore.layout.dtype.rawValue, "expert_dtype_exported": "f32"])
        }
    }
}
