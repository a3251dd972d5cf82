import ArgumentParser
import Foundation
import ModelFormats
import MoEModels

/// `moe-serve synth`: a random-weight model of a realistic shape, large enough that a memory
/// budget forces offloading. Written as a Hugging Face checkpoint (streamed, seeded, with
/// progress), then packed into a store unless only the checkpoint is wanted; or, for the
/// latent-attention shapes, straight to a Q4_0 GGUF in llama.cpp's `deepseek2` layout
/// (`--gguf-out`, no checkpoint on disk; `pack FILE.gguf STORE` makes the store from it).
struct SynthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "synth",
        abstract: "Write a random-weight model of a realistic shape (for benchmarks).",
        discussion: "Shapes:\n" + SyntheticCheckpoint.shapes.map { "  \($0.name): \($0.summary)" }.joined(separator: "\n"))

    @Option(help: "The shape: \(SyntheticCheckpoint.shapes.map(\.name).joined(separator: ", ")).") var shape: String
    @Option(help: "The expert store to create (must not exist).") var out: String?
    @Option(name: .customLong("hf-out"), help: "Also keep the Hugging Face checkpoint here (for other engines); without --out, only this is written.")
    var hfOut: String?
    @Option(name: .customLong("gguf-out"), help: "Write only a Q4_0 GGUF file in llama.cpp's deepseek2 layout here (MLA shapes; no checkpoint on disk; then `pack FILE.gguf STORE`).")
    var ggufOut: String?
    @Option(help: "Expert element type of the store: bf16, f32, int8 or q4.") var experts: ExpertDType = .bf16
    @Option(help: "Expert blob compression: none or lz4 (random weights barely compress).") var compression: ExpertCodec = .none
    @Option(help: "Dense matrices in the store (attention, shared experts, embeddings, LM head; routers stay as they are): bf16, q8 or q4, as `pack --dense`.") var dense: DenseEncoding = .bf16
    @Option(help: "Seed of the weights.") var seed: UInt64 = 1
    @Option(name: .customLong("tokenizer-from"), help: "Model directory whose tokenizer.json (and vocabulary size) to use (default: the bundled demo model).")
    var tokenizerFrom: String?

    func run() throws {
        try reportingErrors {
            guard let chosen = SyntheticCheckpoint.shapes.first(where: { $0.name == shape }) else {
                throw CommandError("--shape: unknown shape '\(shape)'; choose one of \(SyntheticCheckpoint.shapes.map(\.name).joined(separator: ", "))")
            }
            guard out != nil || hfOut != nil || ggufOut != nil else { throw CommandError("give --out STORE_DIR, --hf-out HF_DIR, both, or --gguf-out FILE.gguf") }
            guard ggufOut == nil || (out == nil && hfOut == nil) else { throw CommandError("--gguf-out writes the GGUF file only; pack it with `moe-serve pack FILE.gguf STORE`") }
            let fm = FileManager.default
            for path in [out, hfOut, ggufOut].compactMap({ $0 }) where fm.fileExists(atPath: path) {
                throw CommandError("\(path): already exists; synth never overwrites")
            }
            guard let tokenizerURL = tokenizerFrom.map({ URL(fileURLWithPath: $0) }) ?? BundledModel.location else {
                throw CommandError("no --tokenizer-from given and the bundled demo model was not found")
            }
            let tokenizerConfig = try ModelConfig.parse(Data(contentsOf: tokenizerURL.appendingPathComponent("config.json")),
                                                        file: tokenizerURL.appendingPathComponent("config.json").path)
            let synthetic = SyntheticCheckpoint(shape: chosen, seed: seed, vocabSize: tokenizerConfig.vocabSize,
                                                eosTokenId: tokenizerConfig.eosTokenIds.first)
            if let ggufOut {
                let progress = ProgressLine()
                printError("synth: writing \(chosen.name) (seed \(seed)) as Q4_0 GGUF to \(ggufOut)")
                try synthetic.writeGGUF(to: URL(fileURLWithPath: ggufOut), tokenizerDirectory: tokenizerURL) { p in
                    let rate = Double(p.bytesDone) / max(p.seconds, 1e-9)
                    progress.show(String(format: "synth: %.2f / %.2f GB, %.0f MB/s, ETA %.0f s", Double(p.bytesDone) / 1e9,
                                         Double(p.bytesTotal) / 1e9, rate / 1e6, rate > 0 ? Double(p.bytesTotal - p.bytesDone) / rate : 0))
                }
                progress.finish()
                try printJSON(["shape": chosen.name, "gguf": ggufOut])
                return
            }

            // The checkpoint goes to --hf-out, or to a scratch directory beside the store.
            let hfURL = URL(fileURLWithPath: hfOut ?? (out! + ".hf-partial"))
            let keepCheckpoint = hfOut != nil
            if !keepCheckpoint { try? fm.removeItem(at: hfURL) }
            let progress = ProgressLine()
            printError("synth: writing \(chosen.name) (seed \(seed)) to \(hfURL.path)")
            do {
                try synthetic.write(to: hfURL, tokenizerDirectory: tokenizerURL) { p in
                    let rate = Double(p.bytesDone) / max(p.seconds, 1e-9)
                    progress.show(String(format: "synth: %.1f / %.1f GB, %.0f MB/s, ETA %.0f s", Double(p.bytesDone) / 1e9,
                                         Double(p.bytesTotal) / 1e9, rate / 1e6, rate > 0 ? Double(p.bytesTotal - p.bytesDone) / rate : 0))
                }
            } catch {
                try? fm.removeItem(at: hfURL)
                throw error
            }
            progress.finish()
            if let out {
                defer { if !keepCheckpoint { try? fm.removeItem(at: hfURL) } }
                _ = try packCheckpoint(at: hfURL, into: URL(fileURLWithPath: out), experts: experts, compression: compression, dense: dense)
            }
            try printJSON(["shape": chosen.name, "store": out ?? "", "checkpoint": keepCheckpoint ? hfURL.path : ""])
        }
    }
}
