import ArgumentParser
import ExpertCache
import ExpertPrediction
import Foundation
import InferenceEngine
import ModelFormats
import MoEModels
import Tokenization

/// How a command runs a model: the memory budget, the expert cache and its policy, and
/// prefetching. Shared by `generate`, `serve` and the benchmarks.
struct RuntimeOptions: ParsableArguments {
    @Option(name: .customLong("memory-budget"), help: "RAM for everything (dense weights, KV cache, scratch, expert cache), e.g. 512MiB or 4GiB. The expert cache gets what remains.")
    var memoryBudget: String?
    @Option(name: .customLong("expert-cache"), help: "Bytes of experts to keep in RAM (overrides the share --memory-budget leaves them).")
    var expertCache: String?
    @Option(name: [.customLong("cache-policy"), .customLong("policy")], help: "Eviction policy: \(PolicyChoice.allCases.map(\.rawValue).joined(separator: ", ")).")
    /// LFU (with aging) by default, measured against LRU on the trained demo model's routing
    /// (docs/PERFORMANCE.md): with eight sequences each step touches ~20 of a layer's 32
    /// experts, a cyclic pattern larger than a tight cache, which LRU evicts just before reuse
    /// (at 96 MiB of the widened demo: hit rate 0.20 vs 0.63, 80 vs 172 tok/s); one sequence
    /// reads no more with LFU (demo, 8 MiB: 0.100 vs 0.121 MB per token).
    var cachePolicy: String = PolicyChoice.lfu.rawValue
    @Option(help: "Predictive prefetch of experts: on or off.")
    var prefetch: String = "on"
    /// Two layers ahead with probes: fitted maps stay precise two layers out and wrap round to
    /// the next token's first layers, where the extra lead pays (docs/PREDICTOR.md, session 6).
    @Option(help: "Predictor configuration when prefetching: \(PredictorConfiguration.named.map(\.0).joined(separator: ", ")) (default: cross_layer_deep with predictor probes, else cross_layer).")
    var predictor: String?
    @Option(name: .customLong("kv-cache-type"), help: "How the KV cache stores keys and values: f16 (half the memory, as llama.cpp) or f32 (the reference).")
    var kvCacheType: String = KVPrecision.f16.rawValue
    @Option(name: .customLong("reader-threads"), help: "Concurrent expert reads (the disk queue depth).")
    var readerThreads: Int = 4
    /// Measured on the demo model (docs/PREDICTOR.md): the guesses that miss are mostly the
    /// low-probability ones for experts not in the cache, so without a floor only 32% (one
    /// sequence) and 61% (eight) of prefetched experts were then used, and with eight sequences
    /// prefetch cost 21% of throughput; at 0.1: 63% and 79%, and no loss. With selection probes
    /// the floor is on their calibrated probability of being used instead (default
    /// `PredictorConfiguration.minSelectionProbability`).
    @Option(name: .customLong("prefetch-min-probability"), help: "Prefetch only predicted experts whose probability reaches this (0 prefetches every candidate): the router's probability (default 0.1), or with selection probes the probability of being used (default 0.7).")
    var prefetchMinProbability: Float?
    @Option(name: .customLong("prefetch-budget"), help: "Prefetched, not yet used experts each layer may hold (0: no bound; default: the model's top-k).")
    var prefetchBudget: Int?
    @Option(name: .customLong("predictor-probes"), help: "Fitted cross-layer maps (safetensors from scripts/train_predictor_probes.py) that replace the next layers' routers in the cross-layer gate (default: the model directory's \(ExpertStore.predictorProbesFile) if it has one; none: the routers).")
    var predictorProbes: String?
    @Option(name: .customLong("prefetch-reads"), help: "Prefetch reads that may run at once; demand reads always find a free reader when this is below --reader-threads (0: no separate bound).")
    var prefetchReads: Int = 0

    /// Opens the model at `url` for `maxSequences` concurrent sequences of up to `contextTokens`.
    /// `extraRuntimeBytes` adds to the process's own reservation what a caller will use beyond
    /// the model (the HTTP server's connections and responses). `kvShare` caps the KV cache's
    /// share of what the fixed parts leave (1 gives it everything `maxSequences` sequences of
    /// `contextTokens` need, before the expert cache).
    func open(at url: URL, maxSequences: Int = 1, contextTokens: Int? = nil, extraRuntimeBytes: Int = 0,
              kvShare: Double = 0.25) throws -> ModelRuntime {
        guard prefetch == "on" || prefetch == "off" else { throw CommandError("--prefetch: expected on or off, got '\(prefetch)'") }
        guard let policy = PolicyChoice(rawValue: cachePolicy) else {
            throw CommandError("--cache-policy: unknown policy '\(cachePolicy)'; choose one of \(PolicyChoice.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let kvPrecision = KVPrecision(rawValue: kvCacheType) else {
            throw CommandError("--kv-cache-type: expected f16 or f32, got '\(kvCacheType)'")
        }
        let probesURL = try predictorProbesURL(model: url)
        let predictor = self.predictor ?? (probesURL == nil ? "cross_layer" : "cross_layer_deep")
        guard var predictorConfiguration = PredictorConfiguration.named.first(where: { $0.0 == predictor })?.1 else {
            throw CommandError("--predictor: unknown configuration '\(predictor)'; choose one of \(PredictorConfiguration.named.map(\.0).joined(separator: ", "))")
        }
        guard prefetchReads >= 0 else { throw CommandError("--prefetch-reads: expected 0 or more, got \(prefetchReads)") }
        if let prefetchMinProbability, !(0...1).contains(prefetchMinProbability) {
            throw CommandError("--prefetch-min-probability: expected a probability in 0...1, got \(prefetchMinProbability)")
        }
        predictorConfiguration.minProbability = prefetchMinProbability ?? 0.1
        let tokenizer: Tokenizer? = FileManager.default.fileExists(atPath: url.appendingPathComponent("tokenizer.json").path)
            ? try Tokenizer.load(directory: url) : nil
        // Measured before any weight is read: what the process costs on its own. Measured once
        // per process: a benchmark that opens the model again afterwards finds the first run's
        // lasting footprint (OpenBLAS buffers, thread stacks) already resident, which the
        // allowance in the first measurement covers.
        let runtimeBytes = Self.processRuntimeBytes + extraRuntimeBytes

        // Dense weights and an expert loader, from a packed store or a checkpoint directory.
        let config: ModelConfig
        let weights: WeightSource
        let loader: ExpertLoader
        let denseBytes: Int
        let readsFromDisk: Bool
        if ExpertStore.isStore(at: url) {
            let store = try ExpertStore(url: url)
            config = store.config
            weights = store
            loader = StoreExpertLoader(store: store)
            denseBytes = store.manifest.dense.fileSize
            readsFromDisk = true
        } else {
            let checkpoint = try CheckpointDirectory(url: url)
            config = checkpoint.config
            weights = checkpoint
            let names = ArchitectureDescription.of(config.architecture)
            guard memoryBudget != nil || expertCache != nil else {
                // A checkpoint directory without a budget: every expert in RAM, the simple path.
                let experts = try InMemoryExpertProvider(config: config, weights: checkpoint, names: names)
                let model = try TransformerModel(config: config, weights: checkpoint, experts: experts)
                model.kvPrecision = kvPrecision
                let probes = try probesURL.map { try CrossLayerProbes.load($0, experts: config.expertCount, hidden: config.hiddenSize) }
                return ModelRuntime(model: model, cache: nil, predictor: nil, probes: probes, plan: nil, tokenizer: tokenizer)
            }
            loader = try CheckpointExpertLoader(config: config, weights: checkpoint, names: names)
            denseBytes = checkpoint.denseByteCount(expertNames: names)
            readsFromDisk = false
        }
        _ = readsFromDisk

        let layers = config.moeLayers
        let expertBytes = layers.first.map { loader.expertByteCount(layer: $0, expert: 0) } ?? 0
        let allExpertBytes = expertBytes * config.expertCount * layers.count
        let kvBytesPerToken = TransformerModel.kvBytesPerToken(config, precision: kvPrecision)
        let contextTokens = min(contextTokens ?? config.maxPositionEmbeddings, config.maxPositionEmbeddings)

        var plan: MemoryPlan?
        var cacheBytes = allExpertBytes
        if let memoryBudget {
            let budget = try parseByteSize(memoryBudget, option: "--memory-budget")
            plan = try MemoryPlan.plan(budget: budget, runtimeBytes: runtimeBytes, denseBytes: denseBytes,
                                       scratchBytes: Self.scratchBytes(config, maxSequences: maxSequences)
                                           + ExpertStore.pooledBuffers * expertBytes,
                                       kvBytesPerToken: kvBytesPerToken, kvTokens: contextTokens * maxSequences,
                                       // Two layers' worth of experts, and at least the cache's
                                       // floor of top-k slots in every MoE layer (which is more
                                       // for few-expert models such as Mixtral).
                                       minimumExpertBytes: max(2 * config.expertCount, config.expertsPerToken * layers.count) * expertBytes,
                                       kvShare: kvShare)
            cacheBytes = plan!.expertCacheBytes
        }
        if let expertCache {
            cacheBytes = try parseByteSize(expertCache, option: "--expert-cache")
        }
        let cache = try OffloadingExpertCache(
            loader: loader,
            policy: policy.make(layerCount: config.layerCount, hotPerLayer: config.expertsPerToken),
            configuration: .init(budgetBytes: cacheBytes, floorSlots: config.expertsPerToken, readerThreads: readerThreads,
                                 speculativeLayerBytes: try speculativeLayerBytes(expertBytes: expertBytes, topK: config.expertsPerToken),
                                 maxInFlightPrefetches: prefetchReads == 0 ? nil : prefetchReads),
            layers: layers)
        let model = try TransformerModel(config: config, weights: weights, experts: cache)
        model.kvPrecision = kvPrecision
        // Checked and loaded whether or not this run prefetches, so a wrong file or a predictor
        // that would ignore it fails at start, not silently.
        if predictorProbes != nil && predictorProbes != "none" && !predictorConfiguration.crossLayer {
            throw CommandError("--predictor-probes replaces the cross-layer gate, which --predictor \(predictor) does not use")
        }
        // A model's own probes stay unused by predictors without the cross-layer gate.
        let probes = try (predictorConfiguration.crossLayer ? probesURL : nil).map {
            try CrossLayerProbes.load($0, experts: config.expertCount, hidden: config.hiddenSize)
        }
        if probes?.output == .selection, let prefetchMinProbability {
            predictorConfiguration.minSelectionProbability = prefetchMinProbability
        }
        var expertPredictor: ExpertPredictor?
        if prefetch == "on" && cacheBytes < allExpertBytes {
            expertPredictor = ExpertPredictor(model: model, configuration: predictorConfiguration, provider: cache, probes: probes)
            model.routingObserver = expertPredictor
        }
        return ModelRuntime(model: model, cache: cache, predictor: expertPredictor, predictorName: predictor + (probes == nil ? "" : "+probes"),
                            probes: probes, plan: plan, tokenizer: tokenizer)
    }

    /// The probes to use: `--predictor-probes FILE`, none for `none`, else the model
    /// directory's own if it has them.
    private func predictorProbesURL(model: URL) throws -> URL? {
        switch predictorProbes {
        case "none": return nil
        case let path?:
            guard FileManager.default.fileExists(atPath: path) else { throw CommandError("--predictor-probes: no file at \(path)") }
            return URL(fileURLWithPath: path)
        case nil:
            let own = model.appendingPathComponent(ExpertStore.predictorProbesFile)
            return FileManager.default.fileExists(atPath: own.path) ? own : nil
        }
    }

    /// The per-layer bound on prefetched, unused expert bytes `--prefetch-budget` asks for.
    private func speculativeLayerBytes(expertBytes: Int, topK: Int) throws -> Int? {
        let experts = prefetchBudget ?? topK
        guard experts >= 0 else { throw CommandError("--prefetch-budget: expected 0 or more experts, got \(experts)") }
        return experts == 0 ? nil : experts * expertBytes
    }

    /// The process's footprint, measured at the first `open`.
    nonisolated(unsafe) private static var measuredRuntimeBytes: Int?
    private static var processRuntimeBytes: Int {
        if let measuredRuntimeBytes { return measuredRuntimeBytes }
        let bytes = ProcessMemory.runtimeReservation()
        measuredRuntimeBytes = bytes
        return bytes
    }

    /// Activations of one step: the model's forward workspace for steps of the scheduler's
    /// default token budget (256 rows) from `maxSequences` sequences, exactly as allocated.
    static func scratchBytes(_ config: ModelConfig, maxSequences: Int) -> Int {
        TransformerModel.workspaceBytes(config: config, maxRows: 256, maxSequences: maxSequences)
    }
}

/// A model ready to run, with what serves its experts.
final class ModelRuntime {
    let model: TransformerModel
    let cache: OffloadingExpertCache?
    let predictor: ExpertPredictor?
    /// The predictor's configuration name, with "+probes" when fitted probes replace routers.
    let predictorName: String?
    /// The fitted probes this run loaded (the model's own or `--predictor-probes`), if any.
    let probes: CrossLayerProbes?
    let plan: MemoryPlan?
    let tokenizer: Tokenizer?

    init(model: TransformerModel, cache: OffloadingExpertCache?, predictor: ExpertPredictor?, predictorName: String? = nil,
         probes: CrossLayerProbes? = nil, plan: MemoryPlan?, tokenizer: Tokenizer?) {
        self.probes = probes
        self.model = model
        self.cache = cache
        self.predictor = predictor
        self.predictorName = predictor == nil ? nil : predictorName
        self.plan = plan
        self.tokenizer = tokenizer
    }

    /// Adds `observer` after the predictor (or as the only observer).
    func chain(_ observer: RoutingObserver?) {
        guard let observer else { return }
        if let predictor { predictor.next = observer } else { model.routingObserver = observer }
    }

    /// Stops the cache's readers and breaks the model ↔ predictor reference cycle, so that
    /// the model, its dense weights and its resident experts are freed.
    func close() {
        cache?.close()
        model.routingObserver = nil
    }
}

/// `generate`'s `stats`: the generation's own figures plus the memory plan, the expert
/// cache's statistics and the predictor's when they were used.
struct GenerateStatistics: Encodable {
    var generation: GenerationStats
    var memory: MemoryPlan?
    var expertCache: ExpertCacheStats?
    var prediction: PredictionSummary?
    /// The process's peak resident set (VmHWM) when the statistics were taken.
    var peakResidentBytes: Int? = ProcessMemory.peakResidentBytes()

    private enum CodingKeys: String, CodingKey {
        case memory, expertCache = "expert_cache", prediction, peakResidentBytes = "peak_resident_bytes"
    }

    func encode(to encoder: Encoder) throws {
        try generation.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encodeIfPresent(memory, forKey: .memory)
        try container.encodeIfPresent(expertCache, forKey: .expertCache)
        try container.encodeIfPresent(prediction, forKey: .prediction)
        try container.encodeIfPresent(peakResidentBytes, forKey: .peakResidentBytes)
    }
}

/// Recall and precision of the predictor, total and per layer.
struct PredictionSummary: Encodable {
    var predictor: String?
    var recall: Double
    var precision: Double
    var predicted: Int
    var used: Int
    var withdrawn: Int
    var perLayer: [[String: Double]]

    enum CodingKeys: String, CodingKey { case predictor, recall, precision, predicted, used, withdrawn, perLayer = "per_layer" }

    init(_ statistics: PredictionStatistics, predictor: String? = nil) {
        self.predictor = predictor
        let total = statistics.total
        recall = total.recall
        precision = total.precision
        predicted = total.predicted
        used = total.used
        withdrawn = total.withdrawn
        perLayer = statistics.perLayer.map { ["recall": $0.recall, "precision": $0.precision] }
    }
}

extension CheckpointDirectory {
    /// Bytes of every tensor that is not a routed expert (what stays resident).
    func denseByteCount(expertNames names: ArchitectureDescription) -> Int {
        var expertTensors = Set<String>()
        for layer in config.moeLayers {
            for expert in 0..<config.expertCount {
                let n = names.expertTensorNames(layer, expert)
                expertTensors.formUnion([n.gate, n.up, n.down])
            }
        }
        return tensorNames.filter { !expertTensors.contains($0) }
            .reduce(0) { total, name in total + ((try? entry(name).0.byteCount) ?? 0) }
    }
}
