import ArgumentParser
import ExpertCache
import Foundation
import ModelFormats
import MoEModels

/// `--expert-cache SIZE --cache-policy NAME`: serve routed experts through the offloading
/// cache instead of holding them all in RAM.
struct ExpertCacheOptions: ParsableArguments {
    @Option(name: .customLong("expert-cache"), help: "Keep at most this many bytes of experts in RAM (e.g. 256MiB), loading the rest on demand.")
    var expertCache: String?
    @Option(name: .customLong("cache-policy"), help: "Eviction policy: \(PolicyChoice.allCases.map(\.rawValue).joined(separator: ", ")).")
    var cachePolicy: String = PolicyChoice.lru.rawValue

    /// Opens the model at `url`, through an `OffloadingExpertCache` when `--expert-cache` is
    /// given (the cache is returned so its statistics can be printed and it can be closed).
    func openModel(at url: URL) throws -> (TransformerModel, OffloadingExpertCache?) {
        guard let expertCache else { return (try ModelLoader.loadCheckpoint(at: url), nil) }
        let budget = try parseByteSize(expertCache, option: "--expert-cache")
        guard let choice = PolicyChoice(rawValue: cachePolicy) else {
            throw CommandError("--cache-policy: unknown policy '\(cachePolicy)'; choose one of \(PolicyChoice.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let checkpoint = try CheckpointDirectory(url: url)
        let config = checkpoint.config
        let names = ArchitectureDescription.of(config.architecture)
        let loader = try CheckpointExpertLoader(config: config, weights: checkpoint, names: names)
        let layers = config.moeLayers
        let cache = try OffloadingExpertCache(
            loader: loader,
            policy: choice.make(layerCount: config.layerCount, hotPerLayer: config.expertsPerToken),
            configuration: .init(budgetBytes: budget, floorSlots: config.expertsPerToken),
            layers: layers)
        return (try TransformerModel(config: config, weights: checkpoint, experts: cache), cache)
    }
}

/// `generate`'s `stats`: the generation's own figures plus, when the offloading cache
/// served the experts, its statistics under `expert_cache`.
struct GenerateStatistics: Encodable {
    var generation: GenerationStats
    var expertCache: ExpertCacheStats?

    private enum CodingKeys: String, CodingKey { case expertCache = "expert_cache" }

    func encode(to encoder: Encoder) throws {
        try generation.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encodeIfPresent(expertCache, forKey: .expertCache)
    }
}
