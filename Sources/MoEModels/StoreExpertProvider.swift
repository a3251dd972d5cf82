import Foundation
import ModelFormats

/// Reads every requested expert from an `ExpertStore` on demand, with no caching: the
/// simplest provider over a store, and the baseline the expert cache is measured against.
/// Each expert's buffer is freed as soon as `body` returns for it.
public final class StoreExpertProvider: ExpertProvider, @unchecked Sendable {
    /// The store experts are read from.
    public let store: ExpertStore

    /// A provider over `store`.
    public init(store: ExpertStore) { self.store = store }

    public func withExperts(layer: Int, experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        for expert in experts {
            let stored = try store.readExpert(layer: layer, expert: expert)
            try body(expert, ExpertWeights(gate: stored.gate, up: stored.up, down: stored.down, biases: stored.biases))
        }
    }
}

extension ModelLoader {
    /// Opens the expert store at `url`: dense weights in RAM, experts read from disk on demand.
    public static func loadStore(at url: URL) throws -> TransformerModel {
        let store = try ExpertStore(url: url)
        return try TransformerModel(config: store.config, weights: store, experts: StoreExpertProvider(store: store))
    }

    /// Opens `url` as an expert store when it has a manifest.json, as a GGUF file when it is
    /// one, else as a checkpoint directory.
    public static func load(at url: URL) throws -> TransformerModel {
        if GGUFModel.isGGUF(at: url) { return try loadGGUF(at: url) }
        return ExpertStore.isStore(at: url) ? try loadStore(at: url) : try loadCheckpoint(at: url)
    }

    /// Opens the GGUF file at `url` (a split model by its first part) with every expert in RAM.
    public static func loadGGUF(at url: URL) throws -> TransformerModel {
        let gguf = try GGUFModel(url: url)
        let experts = try InMemoryExpertProvider(config: gguf.config, weights: gguf, names: gguf.config.architecture.definition)
        return try TransformerModel(config: gguf.config, weights: gguf, experts: experts)
    }
}
