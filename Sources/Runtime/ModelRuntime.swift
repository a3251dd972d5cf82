import ExpertCache
import ExpertPrediction
import Foundation
import InferenceEngine
import ModelFormats
import MoEModels
import Tokenization

/// A model ready to run, with what serves its experts: the composition root of every command
/// and of the server. `open` assembles model, memory plan, expert cache and predictor from a
/// `RuntimeSpecification`; `makeEngine` puts an engine over it.
public final class ModelRuntime {
    public let model: TransformerModel
    public let cache: OffloadingExpertCache?
    public let predictor: ExpertPredictor?
    /// The predictor's configuration name, with "+probes" when fitted probes replace routers.
    public let predictorName: String?
    /// The fitted probes this run loaded (the model's own or a given file), if any.
    public let probes: CrossLayerProbes?
    /// How the memory budget is divided, when there is one.
    public let plan: MemoryPlan?
    public let tokenizer: Tokenizer?
    /// What this runtime was opened with.
    public let specification: RuntimeSpecification?
    /// The reader-sizing probe's measurements when `readerThreads` was 0 (auto) and it ran.
    public internal(set) var readerSizing: [ReaderSizing.Sample]?
    /// Reader threads the expert cache runs (the chosen depth under auto); nil without a cache.
    public internal(set) var readerThreads: Int?
    /// Bytes of every expert of every MoE layer (the most an expert cache can usefully hold); nil without a cache.
    public internal(set) var allExpertBytes: Int?
    /// What `--low-bit-misses auto` chose (docs/LOSSY.md), when it ran.
    public var lowBitAuto: LowBitAuto.Decision?
    /// The packed store experts are read from, when the model was opened from one.
    public internal(set) var expertStore: ExpertStore?
    /// What turns prefetching on and off under `--prefetch auto`, when it runs.
    public internal(set) var prefetchSwitch: PrefetchSwitch?
    /// What moves the expert cache's budget under `--memory-budget auto`, when it runs.
    public private(set) var autoBudget: AutoMemoryBudget?

    public init(model: TransformerModel, cache: OffloadingExpertCache?, predictor: ExpertPredictor?, predictorName: String? = nil,
                probes: CrossLayerProbes? = nil, plan: MemoryPlan?, tokenizer: Tokenizer?, specification: RuntimeSpecification? = nil) {
        self.probes = probes
        self.model = model
        self.cache = cache
        self.predictor = predictor
        self.predictorName = predictor == nil ? nil : predictorName
        self.plan = plan
        self.tokenizer = tokenizer
        self.specification = specification
    }

    /// Adds `observer` after the predictor and after every observer chained before it (the
    /// predictor must see each routing first: its prefetches overlap the observers' work).
    public func chain(_ observer: RoutingObserver?) {
        guard let observer else { return }
        if let predictor {
            predictor.next = RoutingObserverFanOut.appending(observer, to: predictor.next)
        } else {
            model.routingObserver = RoutingObserverFanOut.appending(observer, to: model.routingObserver)
        }
    }

    /// Stops the cache's readers and breaks the model ↔ predictor reference cycle, so that
    /// the model, its dense weights and its resident experts are freed.
    public func close() {
        autoBudget?.stop()
        cache?.close()
        model.routingObserver = nil
    }

    /// An engine over the model for `specification.maxSequences` sequences, its KV cache the
    /// plan's share (or every sequence's full context without a plan); not started.
    public func makeEngine(maxWaitingRequests: Int = 64, decode: @escaping @Sendable ([Int]) -> String) -> Engine {
        let maxSequences = specification?.maxSequences ?? 1
        let kvBudget = plan?.kvCacheBytes
            ?? maxSequences * (TransformerModel.kvBytes(model.config, precision: model.kvPrecision, positions: model.config.maxPositionEmbeddings)
                               + model.sequenceStateBytes)
        let limits = Engine.defaultLimits(for: model, kvCacheBudgetBytes: kvBudget, maxRunningSequences: maxSequences,
                                          maxWaitingRequests: maxWaitingRequests, contextLength: specification?.contextTokens)
        let engine = Engine(model: model, limits: limits, decode: decode)
        engine.partialPromptReuse = specification?.partialPromptReuse ?? .whenExact
        return engine
    }

    /// Opens the model `specification` names and assembles what runs it.
    public static func open(_ specification: RuntimeSpecification) throws -> ModelRuntime {
        let spec = specification
        let url = spec.model
        guard spec.readerThreads >= 0 else { throw RuntimeError("reader threads: expected 1 or more (0: sized by a probe of the disk), got \(spec.readerThreads)") }
        guard spec.prefetchReads >= 0 else { throw RuntimeError("prefetch reads: expected 0 or more, got \(spec.prefetchReads)") }
        guard spec.maxSequences >= 1 else { throw RuntimeError("max sequences: expected 1 or more, got \(spec.maxSequences)") }
        if let p = spec.prefetchMinProbability, !(0...1).contains(p) {
            throw RuntimeError("prefetch min probability: expected a probability in 0...1, got \(p)")
        }
        let probesURL = try predictorProbesURL(spec.probes, model: url)
        let predictor = spec.predictor ?? (probesURL == nil ? "cross_layer" : "cross_layer_deep")
        guard var predictorConfiguration = PredictorConfiguration.named.first(where: { $0.0 == predictor })?.1 else {
            throw RuntimeError("unknown predictor configuration '\(predictor)'; choose one of \(RuntimeSpecification.predictorNames.joined(separator: ", "))")
        }
        predictorConfiguration.minProbability = spec.prefetchMinProbability ?? 0.1
        let gguf = GGUFModel.isGGUF(at: url) ? try GGUFModel(url: url) : nil
        let tokenizer: Tokenizer? = try gguf.map { try Tokenizer.load(gguf: $0) }
            ?? (FileManager.default.fileExists(atPath: url.appendingPathComponent("tokenizer.json").path) ? try Tokenizer.load(directory: url) : nil)
        // Measured before any weight is read: what the process costs on its own. Measured once
        // per process: a benchmark that opens the model again afterwards finds the first run's
        // lasting footprint (OpenBLAS buffers, thread stacks) already resident, which the
        // allowance in the first measurement covers.
        let runtimeBytes = processRuntimeBytes + spec.extraRuntimeBytes

        // Dense weights and an expert loader, from a packed store or a checkpoint directory.
        let config: ModelConfig
        let weights: WeightSource
        let loader: ExpertLoader
        let denseBytes: Int
        var openedStore: ExpertStore?
        if ExpertStore.isStore(at: url) {
            let store = try ExpertStore(url: url, ioEngine: spec.ioEngine)
            openedStore = store
            config = store.config
            weights = store
            let storeLoader = StoreExpertLoader(store: store)
            // An emulated disk of one fixed rate, for benchmarks (`MOE_DISK_MBPS`).
            loader = try PacedExpertLoader.environmentRate().map { PacedExpertLoader(base: storeLoader, bytesPerSecond: $0) } ?? storeLoader
            denseBytes = store.manifest.dense.fileSize
        } else {
            // A GGUF file serves its tensors under the checkpoint names, so both take this path.
            let checkpoint: WeightSource & ModelFileSource = try gguf ?? CheckpointDirectory(url: url)
            config = checkpoint.config
            weights = checkpoint
            let names = ArchitectureDescription.of(config.architecture)
            guard spec.memoryBudgetBytes != nil || spec.expertCacheBytes != nil else {
                // A checkpoint directory without a budget: every expert in RAM, the simple path.
                let experts = try InMemoryExpertProvider(config: config, weights: checkpoint, names: names)
                let model = try TransformerModel(config: config, weights: checkpoint, experts: experts)
                model.kvPrecision = spec.kvPrecision
                let probes = try probesURL.map { try CrossLayerProbes.load($0, experts: config.expertCount, hidden: config.hiddenSize) }
                return ModelRuntime(model: model, cache: nil, predictor: nil, probes: probes, plan: nil, tokenizer: tokenizer,
                                    specification: spec)
            }
            loader = try CheckpointExpertLoader(config: config, weights: checkpoint, names: names)
            denseBytes = checkpoint.residentByteCount(expertNames: names)
        }

        // The model directory's own expert surrogates (`ExpertSurrogates`), for the shadow, so only
        // where one can run; resident, so counted with the dense weights (below).
        var surrogates = spec.prefetch == .off || !spec.shadowRouting || spec.surrogateShadow == .off ? nil
            : try expertSurrogatesURL(spec.surrogates, model: url).map { try ExpertSurrogates.load($0, config: config) }
        let layers = config.moeLayers
        let expertBytes = layers.first.map { loader.expertByteCount(layer: $0, expert: 0) } ?? 0
        let allExpertBytes = expertBytes * config.expertCount * layers.count
        let contextTokens = min(spec.contextTokens ?? config.maxPositionEmbeddings, config.maxPositionEmbeddings)

        var plan: MemoryPlan?
        var cacheBytes = allExpertBytes
        if let budget = spec.memoryBudgetBytes {
            do {
                plan = try Self.plan(spec, budget: budget, runtimeBytes: runtimeBytes, denseBytes: denseBytes + (surrogates?.byteCount ?? 0),
                                     config: config, expertBytes: expertBytes, allExpertBytes: allExpertBytes, contextTokens: contextTokens)
            } catch where surrogates != nil {
                // They only sharpen the predictor's guesses: a budget too tight for them runs without.
                surrogates = nil
                plan = try Self.plan(spec, budget: budget, runtimeBytes: runtimeBytes, denseBytes: denseBytes,
                                     config: config, expertBytes: expertBytes, allExpertBytes: allExpertBytes, contextTokens: contextTokens)
            }
            cacheBytes = plan!.expertCacheBytes
            if cacheBytes >= allExpertBytes && spec.expertCacheBytes == nil, surrogates != nil {
                // Every expert cached: nothing is read, no shadow runs, and their bytes go to the plan.
                surrogates = nil
                plan = try Self.plan(spec, budget: budget, runtimeBytes: runtimeBytes, denseBytes: denseBytes,
                                     config: config, expertBytes: expertBytes, allExpertBytes: allExpertBytes, contextTokens: contextTokens)
                cacheBytes = plan!.expertCacheBytes
            }
        }
        if let expertCacheBytes = spec.expertCacheBytes { cacheBytes = expertCacheBytes }
        // Every expert cached: nothing is read, so no shadow runs.
        if cacheBytes >= allExpertBytes { surrogates = nil }
        let prefetchExperts = spec.prefetchBudgetExperts ?? config.expertsPerToken
        guard prefetchExperts >= 0 else { throw RuntimeError("prefetch budget: expected 0 or more experts, got \(prefetchExperts)") }
        // Auto (0): probe the disk when experts will be read at run time, else the default.
        var readerThreads = spec.readerThreads
        var readerSizing: [ReaderSizing.Sample]?
        if readerThreads == 0 {
            readerThreads = RuntimeSpecification.defaultReaderThreads
            if let store = openedStore, cacheBytes < allExpertBytes, let samples = try ReaderSizing.measure(store: store),
               let depth = ReaderSizing.choose(samples) {
                // At least two, so a demand read always finds a reader beside a prefetch.
                readerThreads = max(2, depth)
                readerSizing = samples
            }
        }
        let cache = try OffloadingExpertCache(
            loader: loader,
            policy: spec.policy.make(layerCount: config.layerCount, hotPerLayer: config.expertsPerToken),
            configuration: .init(budgetBytes: cacheBytes,
                                 floorSlots: MemoryPlan.floorSlots(cacheBytes: cacheBytes, expertBytes: expertBytes,
                                                                   expertsPerToken: config.expertsPerToken, layers: layers.count),
                                 readerThreads: readerThreads,
                                 speculativeLayerBytes: prefetchExperts == 0 ? nil : prefetchExperts * expertBytes,
                                 maxInFlightPrefetches: spec.prefetchReads == 0 ? nil : spec.prefetchReads,
                                 admissionWindow: (spec.admissionWindow ?? 0) > 0 ? spec.admissionWindow : nil),
            layers: layers)
        let model = try TransformerModel(config: config, weights: weights, experts: cache)
        model.kvPrecision = spec.kvPrecision
        model.expertSurrogates = surrogates
        model.surrogateShadow = spec.surrogateShadow
        // Checked and loaded whether or not this run prefetches, so a wrong file or a predictor
        // that would ignore it fails at start, not silently.
        if case .file = spec.probes, !predictorConfiguration.crossLayer {
            throw RuntimeError("predictor probes replace the cross-layer gate, which the predictor \(predictor) does not use")
        }
        // A model's own probes stay unused by predictors without the cross-layer gate.
        let probes = try (predictorConfiguration.crossLayer ? probesURL : nil).map {
            try CrossLayerProbes.load($0, experts: config.expertCount, hidden: config.hiddenSize)
        }
        if probes?.output == .selection, let p = spec.prefetchMinProbability {
            predictorConfiguration.minSelectionProbability = p
        }
        var expertPredictor: ExpertPredictor?
        var prefetchSwitch: PrefetchSwitch?
        if spec.prefetch != .off && cacheBytes < allExpertBytes {
            let predictor = ExpertPredictor(model: model, configuration: predictorConfiguration, provider: cache, probes: probes)
            expertPredictor = predictor
            if spec.prefetch == .auto {
                let toggle = PrefetchSwitch(predictor: predictor, shadowRouting: spec.shadowRouting,
                                            setShadowRouting: { [weak model] in model?.shadowRouting = $0 })
                prefetchSwitch = toggle
                model.routingObserver = toggle
            } else {
                model.routingObserver = predictor
                model.shadowRouting = spec.shadowRouting
            }
        }
        let runtime = ModelRuntime(model: model, cache: cache, predictor: expertPredictor, predictorName: predictor + (probes == nil ? "" : "+probes"),
                                   probes: probes, plan: plan, tokenizer: tokenizer, specification: spec)
        runtime.prefetchSwitch = prefetchSwitch
        runtime.readerSizing = readerSizing
        runtime.readerThreads = readerThreads
        runtime.expertStore = openedStore
        runtime.allExpertBytes = allExpertBytes
        // The sequence-aware policy needs to know whose tokens it sees. `MOE_SEQUENCE_REPORTS=0`
        // withholds them (the policy then counts and ages only), to measure what they add.
        if spec.policy == .sequence, ProcessInfo.processInfo.environment["MOE_SEQUENCE_REPORTS"] != "0" {
            runtime.chain(SequenceRoutingFeeder(cache: cache))
        }
        if spec.autoMemoryBudget {
            try runtime.startAutoMemoryBudget(totalBytes: AutoMemoryBudget.machineTotalBytes() ?? (plan?.budgetBytes ?? cacheBytes) * 2,
                                              readings: { MemoryReading.sample() }, interval: AutoMemoryBudget.defaultInterval)
        }
        return runtime
    }

    /// What warming the expert cache's buffers did (`warmExpertBuffers`).
    public struct BufferWarming: Sendable {
        public var buffers: Int
        public var bytes: Int
        public var seconds: Double
        /// One line for the log.
        public var summary: String {
            String(format: "%d expert buffers warmed (%.0f MiB, %d bytes) in %.2f s", buffers, Double(bytes) / Double(1 << 20), bytes, seconds)
        }
    }

    /// Maps and faults in the expert cache's buffers for its budget before reads need them
    /// (`OffloadingExpertCache.warmBuffers`), on this thread; nil without a cache, and under
    /// `--memory-budget auto`, whose budget is what the machine can spare now, not what the
    /// cache should take before it needs it. Stops when the runtime closes.
    /// `MOE_WARM_BUFFERS=off` turns it off (for comparison): reads then map their buffers as
    /// they come, as before session 33.
    @discardableResult
    public func warmExpertBuffers() -> BufferWarming? {
        guard let cache, let allExpertBytes, Self.warmsBuffers, autoBudget == nil else { return nil }
        return Self.warm(cache, everyExpertBytes: allExpertBytes, bufferBytes: expertStore?.expertBufferSize ?? 0)
    }

    /// `warmExpertBuffers` on a background thread (a server's, once it is ready); `done`
    /// receives what it did, unless there was nothing to warm.
    public func startWarmingExpertBuffers(done: @escaping @Sendable (BufferWarming) -> Void) {
        guard let cache, let allExpertBytes, Self.warmsBuffers, autoBudget == nil else { return }
        let bufferBytes = expertStore?.expertBufferSize ?? 0
        let thread = Thread {
            let warming = Self.warm(cache, everyExpertBytes: allExpertBytes, bufferBytes: bufferBytes)
            if warming.buffers > 0 { done(warming) }
        }
        thread.name = "expert-buffer-warming"
        thread.start()
    }

    private static func warm(_ cache: OffloadingExpertCache, everyExpertBytes: Int, bufferBytes: Int) -> BufferWarming {
        let start = DispatchTime.now().uptimeNanoseconds
        let count = cache.warmBuffers(everyExpertBytes: everyExpertBytes)
        return BufferWarming(buffers: count, bytes: count * bufferBytes, seconds: Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
    }

    static let warmsBuffers: Bool = {
        let value = ProcessInfo.processInfo.environment["MOE_WARM_BUFFERS"]?.lowercased()
        return !(value == "0" || value == "off" || value == "false")
    }()

    /// Lets the machine move the expert cache's budget (`--memory-budget auto`): between the
    /// least the cache's floors need and every expert, with watermarks sized from `totalBytes`
    /// (the machine's RAM). Samples `readings` every `interval` seconds on a background thread
    /// (stopped by `close`); with `interval` nil the caller steps it (tests).
    @discardableResult
    public func startAutoMemoryBudget(totalBytes: Int, readings: @escaping AutoMemoryBudget.ReadingSource,
                                      interval: TimeInterval?) throws -> AutoMemoryBudget {
        guard let cache, let allExpertBytes else { throw RuntimeError("memory budget auto: this run has no expert cache to size") }
        let settings = MemoryBudgetController.Settings(floorBytes: cache.minimumBudgetBytes, ceilingBytes: allExpertBytes, totalBytes: totalBytes)
        let others = plan.map { $0.budgetBytes - $0.expertCacheBytes } ?? 0
        let auto = try AutoMemoryBudget(cache: cache, settings: settings, otherBytes: others, readings: readings)
        autoBudget?.stop()
        autoBudget = auto
        if let interval { auto.start(interval: interval) }
        return auto
    }

    /// The probes to use: a given file, none, else the model directory's own if it has them.
    private static func predictorProbesURL(_ source: RuntimeSpecification.ProbeSource, model: URL) throws -> URL? {
        try companionFileURL(source, model: model, ownFile: ExpertStore.predictorProbesFile, what: "predictor probes")
    }

    /// The expert surrogates to use: a given file, none, else the model directory's own if it has them.
    private static func expertSurrogatesURL(_ source: RuntimeSpecification.ProbeSource, model: URL) throws -> URL? {
        try companionFileURL(source, model: model, ownFile: ExpertSurrogates.fileName, what: "expert surrogates")
    }

    /// A file that travels with a model (`ownFile` in its directory): a given file, which must
    /// exist, none, or the model's own if it has one.
    private static func companionFileURL(_ source: RuntimeSpecification.ProbeSource, model: URL, ownFile: String, what: String) throws -> URL? {
        switch source {
        case .disabled: return nil
        case let .file(url):
            guard FileManager.default.fileExists(atPath: url.path) else { throw RuntimeError("\(what): no file at \(url.path)") }
            return url
        case .modelDefault:
            let own = model.appendingPathComponent(ownFile)
            return FileManager.default.fileExists(atPath: own.path) ? own : nil
        }
    }

    /// The memory plan for `spec` under `budget`, with `denseBytes` of resident weights.
    private static func plan(_ spec: RuntimeSpecification, budget: Int, runtimeBytes: Int, denseBytes: Int, config: ModelConfig,
                             expertBytes: Int, allExpertBytes: Int, contextTokens: Int) throws -> MemoryPlan {
        var budget = budget
        let kvBytesPerToken = TransformerModel.kvBytesPerToken(config, precision: spec.kvPrecision)
        if spec.autoMemoryBudget {
            // `auto` starts from a share of free memory, bounded by what planning needs
            // (everything else with a full KV cache and the smallest expert cache) and by
            // what caching every expert needs: a budget past that would go unused.
            let others = runtimeBytes + denseBytes + TransformerModel.derivedWeightBytes(config)
                + scratchBytes(config, maxSequences: spec.maxSequences) + ExpertStore.pooledBuffers * expertBytes
                + spec.maxSequences * (TransformerModel.kvBytes(config, precision: spec.kvPrecision, positions: contextTokens)
                                       + TransformerModel.sequenceStateBytes(config))
            let least = others + MemoryPlan.minimumExpertBytes(expertBytes: expertBytes, expertsPerToken: config.expertsPerToken,
                                                               readsInFlight: spec.prefetchBudgetExperts ?? config.expertsPerToken)
            budget = min(max(budget, least), max(least, others + allExpertBytes))
        }
        return try MemoryPlan.plan(budget: budget, runtimeBytes: runtimeBytes,
                                   denseBytes: denseBytes + TransformerModel.derivedWeightBytes(config),
                                   scratchBytes: scratchBytes(config, maxSequences: spec.maxSequences)
                                       + ExpertStore.pooledBuffers * expertBytes,
                                   kvBytesPerToken: kvBytesPerToken, kvTokens: contextTokens * spec.maxSequences,
                                   // What one step needs: a layer's top-k and the prefetch
                                   // reads in flight (the floors shrink to fit, below).
                                   minimumExpertBytes: MemoryPlan.minimumExpertBytes(
                                       expertBytes: expertBytes, expertsPerToken: config.expertsPerToken,
                                       readsInFlight: spec.prefetchBudgetExperts ?? config.expertsPerToken),
                                   kvShare: spec.kvShare,
                                   sequenceStateBytes: TransformerModel.sequenceStateBytes(config) * spec.maxSequences,
                                   kvWindowBytes: spec.maxSequences * (TransformerModel.kvBytes(config, precision: spec.kvPrecision, positions: contextTokens)
                                       - contextTokens * kvBytesPerToken))
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
    public static func scratchBytes(_ config: ModelConfig, maxSequences: Int) -> Int {
        TransformerModel.workspaceBytes(config: config, maxRows: 256, maxSequences: maxSequences)
    }
}

/// A model file or directory read in place (a checkpoint directory or a GGUF file): its
/// configuration and the bytes of what stays resident.
protocol ModelFileSource {
    var config: ModelConfig { get }
    func residentByteCount(expertNames: ArchitectureDescription) -> Int
}

extension GGUFModel: ModelFileSource {
    func residentByteCount(expertNames: ArchitectureDescription) -> Int { denseByteCount }
}

extension Tokenizer {
    /// The tokenizer and chat template of a GGUF file's metadata.
    public static func load(gguf: GGUFModel) throws -> Tokenizer {
        let files = try GGUFTokenizerFiles(metadata: gguf.metadata, file: gguf.url.path)
        return try Tokenizer(tokenizerJSON: files.tokenizerJSON, tokenizerConfigJSON: files.tokenizerConfigJSON,
                             tokenizerFile: "\(gguf.url.path) (tokenizer metadata)", configFile: "\(gguf.url.path) (tokenizer metadata)")
    }
}

extension CheckpointDirectory: ModelFileSource {
    func residentByteCount(expertNames: ArchitectureDescription) -> Int { denseByteCount(expertNames: expertNames) }
}

extension CheckpointDirectory {
    /// Bytes of every tensor that is not a routed expert (what stays resident).
    public func denseByteCount(expertNames names: ArchitectureDescription) -> Int {
        var expertTensors = Set<String>()
        for layer in config.moeLayers {
            for expert in 0..<config.expertCount {
                let n = names.expertTensorNames(layer, expert)
                expertTensors.formUnion([n.gate, n.up, n.down])
            }
            if let fused = names.fusedExperts { expertTensors.formUnion(fused(layer).allNames) }
        }
        // Float8 weights are held dequantized as bf16; their block scales are folded in.
        return tensorNames.filter { !expertTensors.contains($0) && !isFP8Scale($0) && !isBeyondLastLayer($0) && !names.isUnusedTensor($0) }
            .reduce(0) { total, name in
                guard let found = try? entry(name).0 else { return total }
                return total + (found.dtype == .f8e4m3 ? 2 * found.elementCount : found.byteCount)
            }
    }
}
