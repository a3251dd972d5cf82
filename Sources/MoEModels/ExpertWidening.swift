import Foundation
import ModelFormats
import TensorMath

/// Widens every routed expert of a packed model with inert units, keeping its function.
///
/// Why: the bundled demo model has learned routing but 61 KB experts, which a disk reads in
/// less time than its queue latency, so it cannot show whether prefetch hides I/O behind
/// compute. Appending `width − w` zero units to each expert (zero rows of `gate` and `up`,
/// zero columns of `down`) leaves every output unchanged — silu(0)·0 = 0 and the zero columns
/// of `down` add nothing — so routing, tokens and logits stay those of the trained model,
/// while every expert costs `width / w` times the bytes to read and to multiply.
///
/// The result is written as a Hugging Face checkpoint (dense tensors in their stored dtype,
/// experts as float32 — a q4 or int8 expert widens exactly), ready for the store packer.
public enum ExpertWidening {
    /// Progress of a widening: experts written so far.
    public struct Progress: Sendable {
        public var expertsDone: Int
        public var expertsTotal: Int
    }

    /// The `config.json` key that holds the routed experts' width for `architecture`.
    public static func widthKey(for architecture: Architecture) -> String { architecture.definition.expertWidthKey }

    /// Writes the model of `store`, experts widened to `width`, as a checkpoint in `directory`
    /// (created; must not exist): `config.json`, `model.safetensors` and the store's copied files.
    public static func writeCheckpoint(of store: ExpertStore, width: Int, to directory: URL,
                                       progress: ((Progress) -> Void)? = nil) throws {
        let config = store.config
        let oldWidth = config.expertIntermediateSize
        guard width >= oldWidth else {
            throw ModelFormatError("expert width \(width) is smaller than the model's \(oldWidth); widening only adds units")
        }
        guard case .object(var configJSON) = store.manifest.config else {
            throw ModelFormatError("\(store.url.path): the manifest's config is not a JSON object")
        }
        let fm = FileManager.default
        guard !fm.fileExists(atPath: directory.path) else { throw ModelFormatError.file(directory.path, "already exists") }
        try fm.createDirectory(at: directory, withIntermediateDirectories: true)

        configJSON[widthKey(for: config.architecture)] = .number(Double(width))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(JSONValue.object(configJSON)).write(to: directory.appendingPathComponent("config.json"))
        for file in store.manifest.copiedFiles where file != "config.json" {
            try fm.copyItem(at: store.url.appendingPathComponent(file), to: directory.appendingPathComponent(file))
        }
        // Inert units leave every hidden state and routing decision as they were, so the
        // model's fitted predictor probes (`--predictor-probes`) hold for the widened one too
        // (stores packed before probes travelled with them hold the file unlisted).
        // So do the experts' surrogates: a zero unit adds nothing to an expert's output.
        for name in [ExpertStore.predictorProbesFile, ExpertSurrogates.fileName] where !store.manifest.copiedFiles.contains(name) {
            let file = store.url.appendingPathComponent(name)
            if fm.fileExists(atPath: file.path) { try fm.copyItem(at: file, to: directory.appendingPathComponent(name)) }
        }

        let names = ArchitectureDescription.of(config.architecture)
        let hidden = config.hiddenSize
        let experts = config.moeLayers.flatMap { layer in (0..<config.expertCount).map { (layer, $0) } }
        var tensors = store.manifest.dense.tensors.map { entry in
            SafetensorsStreamWriter.Tensor(name: entry.name, dtype: entry.dtype == .bf16 ? .bf16 : .f32, shape: entry.shape)
        }
        for (layer, expert) in experts {
            let n = names.expertTensorNames(layer, expert)
            tensors.append(.init(name: n.gate, dtype: .f32, shape: [width, hidden]))
            tensors.append(.init(name: n.up, dtype: .f32, shape: [width, hidden]))
            tensors.append(.init(name: n.down, dtype: .f32, shape: [hidden, width]))
        }
        let writer = try SafetensorsStreamWriter(url: directory.appendingPathComponent("model.safetensors"), tensors: tensors)

        // Dense tensors: bf16 stays bf16 (its float32 widening converts back exactly).
        for entry in store.manifest.dense.tensors {
            let values = try store.vector(entry.name, count: entry.shape.reduce(1, *))
            if entry.dtype == .bf16 {
                try values.map { FloatConversion.bf16(from: $0) }.withUnsafeBytes { try writer.append($0) }
            } else {
                try values.withUnsafeBytes { try writer.append($0) }
            }
        }
        // Experts: original units first, then zeros.
        let zeroRows = [Float](repeating: 0, count: (width - oldWidth) * hidden)
        let zeroColumns = [Float](repeating: 0, count: width - oldWidth)
        for (index, (layer, expert)) in experts.enumerated() {
            let stored = try store.readExpert(layer: layer, expert: expert)
            for matrix in [stored.gate, stored.up] {   // [oldWidth, hidden] -> [width, hidden]
                for r in 0..<oldWidth { try matrix.row(r).withUnsafeBytes { try writer.append($0) } }
                try zeroRows.withUnsafeBytes { try writer.append($0) }
            }
            var down = [Float]()                       // [hidden, oldWidth] -> [hidden, width]
            down.reserveCapacity(hidden * width)
            for r in 0..<hidden {
                down += stored.down.row(r)
                down += zeroColumns
            }
            try down.withUnsafeBytes { try writer.append($0) }
            progress?(Progress(expertsDone: index + 1, expertsTotal: experts.count))
        }
        try writer.finish()
    }
}
