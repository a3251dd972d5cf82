import ExpertCache
import ExpertPrediction
import Foundation
import HTTPServer
import InferenceEngine
import JSONCoding
import ModelFormats
import MoEModels
import Runtime
import Tokenization

/// The real backend `serve` attaches once the model has loaded: glue between the `Runtime`
/// library (model, cache, predictor, engine, live statistics) and the HTTP server (the
/// tokenizer as its prompt codec, the runtime's snapshots rendered as `/metrics` and `/v1/stats`).
enum ServeBackend {
    /// Memory the server itself uses under load beyond the model: connections, request bodies
    /// being received and decoded, responses being written (`RequestMemory`, derived from the
    /// limits the server enforces), plus per-request engine state. Measured with
    /// `scripts/load_test.sh`: see docs/RELIABILITY.md.
    static func serverReserveBytes(_ config: ServerConfig) -> Int { APIServer.memoryReservation(for: config) }

    /// The runtime specification of `config` (the bundled demo model when it names none); a bad
    /// value fails naming its configuration key.
    static func specification(_ config: ServerConfig) throws -> RuntimeSpecification {
        guard let url = config.model.map({ URL(fileURLWithPath: $0) }) ?? BundledModel.location else {
            throw CommandError("no model given and the bundled demo model was not found (set MOE_DEMO_MODEL or pass --model)")
        }
        func key<T>(_ name: String, _ body: () throws -> T) throws -> T {
            do { return try body() } catch let error as RuntimeError { throw CommandError("invalid value for '\(name)': \(error)") }
        }
        let settings = config.runtime
        var spec = RuntimeSpecification(model: url)
        spec.memoryBudgetBytes = config.memoryBudget
        spec.autoMemoryBudget = config.memoryBudgetAuto
        spec.expertCacheBytes = settings.expertCacheBytes
        if let name = settings.cachePolicy { spec.policy = try key("cache_policy") { try RuntimeSpecification.policy(named: name) } }
        // A server runs long enough for `auto` to measure both ways and keep the faster: on the
        // widened demo it came within 1-4% of the better fixed setting in 11 of 12 runs of 600-1000
        // decode steps, on a throttled disk where prefetch costs 6-13% and on one where it gains
        // 9-14% (docs/PREDICTOR.md, session 28). `generate` and the benchmarks keep `on`: their
        // runs are too short for a round to end.
        spec.prefetch = try settings.prefetch.map { name in try key("prefetch") { try RuntimeSpecification.prefetch(named: name) } } ?? .auto
        if let predictor = settings.predictor {
            guard RuntimeSpecification.predictorNames.contains(predictor) else {
                throw CommandError("invalid value for 'predictor': unknown configuration '\(predictor)'; choose one of \(RuntimeSpecification.predictorNames.joined(separator: ", "))")
            }
            spec.predictor = predictor
        }
        if let probes = settings.predictorProbes { spec.probes = RuntimeSpecification.probes(named: probes) }
        if let name = settings.kvCacheType { spec.kvPrecision = try key("kv_cache_type") { try RuntimeSpecification.kvPrecision(named: name) } }
        if let threads = settings.readerThreads { spec.readerThreads = threads }
        if let name = settings.ioEngine {
            do { spec.ioEngine = try IOEngineChoice.parse(name) } catch { throw CommandError("invalid value for 'io_engine': \(error)") }
        }
        if let reads = settings.prefetchReads { spec.prefetchReads = reads }
        spec.prefetchMinProbability = settings.prefetchMinProbability.map { Float($0) }
        spec.prefetchBudgetExperts = settings.prefetchBudget
        if let shadow = settings.shadowRouting { spec.shadowRouting = shadow }
        if let surrogates = settings.expertSurrogates { spec.surrogates = RuntimeSpecification.probes(named: surrogates) }
        if let name = settings.surrogateShadow { spec.surrogateShadow = try key("surrogate_shadow") { try RuntimeSpecification.surrogateShadow(named: name) } }
        spec.maxSequences = settings.maxSequences
        spec.contextTokens = settings.contextSize
        if let name = settings.promptCachePartial {
            guard let reuse = PartialPromptReuse(name: name) else {
                throw CommandError("invalid value for 'prompt_cache_partial': '\(name)'; choose one of \(PartialPromptReuse.names.joined(separator: ", "))")
            }
            spec.partialPromptReuse = reuse
        }
        spec.extraRuntimeBytes = serverReserveBytes(config)
        return spec
    }

    /// Opens the model `specification` names, starts its engine and the statistics feeding
    /// `metrics`.
    static func make(_ specification: RuntimeSpecification, config: ServerConfig, metrics: ServerMetrics) throws -> (ModelBackend, Engine, ModelRuntime) {
        let runtime = try ModelRuntime.open(specification)
        if let auto = runtime.autoBudget {
            let s = auto.settings
            FileHandle.standardError.write(Data(("memory budget: auto, starting at \(formatBytes(auto.budgetBytes)) (expert cache \(formatBytes(auto.expertCacheBudgetBytes)), "
                + "between \(formatBytes(s.floorBytes)) and \(formatBytes(s.ceilingBytes))); shrinks below \(formatBytes(s.lowWatermarkBytes)) free "
                + "or at \(Int(s.pressureShrinkPercent))% memory pressure, grows above \(formatBytes(s.highWatermarkBytes)) free\n").utf8))
        }
        runtime.cache?.skipMissingBelow = config.skipMissingBelow
        if config.lowBitMisses { try LossyOptions.enableLowBitMisses(runtime) }
        if config.lowBitMissesAuto, let d = try LossyOptions.chooseLowBitMisses(runtime) {
            metrics.setLowBitAuto(diskBytesPerSecond: d.diskBytesPerSecond, computeBytesPerSecond: d.computeBytesPerSecond, slowDisk: d.mode == .slowDisk)
        }
        guard let tokenizer = runtime.tokenizer else {
            throw CommandError("\(specification.model.path): serving needs a tokenizer.json beside the model")
        }
        let engine = runtime.makeEngine(maxWaitingRequests: config.maxQueuedRequests,
                                        decode: { [tokenizer] in tokenizer.decode($0, skipSpecialTokens: true) })
        // The monitor chains its usage counter after the predictor before any step runs.
        let monitor = RuntimeMonitor(engine: engine, runtime: runtime)
        engine.start()
        let stats = LiveStatistics(monitor: monitor, engine: engine)
        monitor.start { snapshot in stats.render(snapshot, into: metrics) }
        let codec = TokenizerCodec(tokenizer: tokenizer,
                                   contextLength: min(specification.contextTokens ?? Int.max, runtime.model.config.maxPositionEmbeddings),
                                   modelName: specification.model.lastPathComponent, extraStopIds: Set(runtime.model.config.eosTokenIds))
        var backend = ModelBackend(service: engine, codec: codec, stats: stats)
        backend.info = modelInfo(specification, runtime: runtime)
        return (backend, engine, runtime)
    }

    /// What `/v1/models` and `/props` report: path, architecture, how experts and dense weights
    /// are stored (a packed store's manifest, else the checkpoint's `dtype`), slots.
    static func modelInfo(_ specification: RuntimeSpecification, runtime: ModelRuntime) -> ModelInfo {
        var info = ModelInfo()
        let url = specification.model
        info.path = url.path
        info.trainedContextLength = runtime.model.config.maxPositionEmbeddings
        info.slots = specification.maxSequences
        let manifestURL = url.appendingPathComponent("manifest.json")
        let configURL = url.appendingPathComponent("config.json")
        if let data = try? Data(contentsOf: manifestURL), let json = try? JSON.parse([UInt8](data)) {
            info.architecture = json["architecture"]?.stringValue ?? ""
            let dtype = json["experts"]?["dtype"]?.stringValue ?? "?"
            let codec = json["experts"]?["codec"]?.stringValue ?? "none"
            info.quantization = "experts \(dtype)" + (codec == "none" ? "" : " (\(codec))")
        } else if let data = try? Data(contentsOf: configURL), let json = try? JSON.parse([UInt8](data)) {
            info.architecture = json["architectures"]?[0]?.stringValue ?? ""
            info.quantization = json["torch_dtype"]?.stringValue ?? json["dtype"]?.stringValue ?? "unknown"
        } else {
            info.quantization = url.pathExtension == "gguf" ? "gguf" : "unknown"
        }
        return info
    }
}

/// The tokenizer and chat template as the HTTP layer's `PromptCodec`.
struct TokenizerCodec: ExtendedPromptCodec {
    let tokenizer: Tokenizer
    let contextLength: Int
    let modelName: String
    let extraStopIds: Set<Int>

    func encode(_ text: String, addSpecialTokens: Bool) -> [Int] { tokenizer.encode(text, addSpecialTokens: addSpecialTokens) }
    func decode(_ ids: [Int]) -> String { tokenizer.decode(ids) }
    func renderChat(_ messages: [ChatTurn]) throws -> String {
        try tokenizer.chatTemplate.render(messages: messages.map { ChatMessage(role: $0.role, content: $0.content) },
                                          addGenerationPrompt: true)
    }
    var vocabularySize: Int { tokenizer.vocabularySize }
    var stopTokenIds: Set<Int> { tokenizer.eosTokenIds.union(extraStopIds) }
    func tokenBytes(_ id: Int) -> [UInt8]? { tokenizer.tokenBytes(id) }
    func tokenId(for text: String) -> Int? { tokenizer.tokenId(for: text) }
    var chatTemplateSource: String? { tokenizer.chatTemplate.source }
    func renderChat(messages: [JSON], tools: [JSON]?, extra: [(String, JSON)], addGenerationPrompt: Bool) throws -> String {
        func value(_ json: JSON) throws -> TemplateValue { try TemplateValue.fromJSON(Data(json.serialized().utf8)) }
        var context: [String: TemplateValue] = [:]
        for (key, v) in extra { context[key] = try value(v) }
        return try tokenizer.chatTemplate.render(messages: try messages.map(value), tools: try tools?.map(value),
                                                 addGenerationPrompt: addGenerationPrompt, extraContext: context)
    }
}

/// The runtime's snapshots as the HTTP layer's types: `/v1/stats` and the dashboard read
/// `currentStats`, `/metrics` gets each sample. No figure is computed here.
final class LiveStatistics: StatsProvider, SlotProvider, @unchecked Sendable {
    private let monitor: RuntimeMonitor
    private let engine: Engine?

    init(monitor: RuntimeMonitor, engine: Engine? = nil) {
        self.monitor = monitor
        self.engine = engine
    }

    func currentStats() -> EngineStats { Self.engineStats(monitor.latest) }

    /// The engine's sequences for `/slots` (a copy taken under the engine's lock).
    func slots() -> [SlotState] {
        (engine?.sequenceStates ?? []).map {
            SlotState(id: $0.id, waiting: $0.waiting, promptTokens: $0.promptTokens, prefilledTokens: $0.prefilledTokens,
                      generatedTokens: $0.generatedTokens, maxTokens: $0.maxTokens)
        }
    }

    /// Feeds one sample to the Prometheus metrics.
    func render(_ snapshot: RuntimeSnapshot, into metrics: ServerMetrics) {
        var cache = ExpertCacheSnapshot()
        if let stats = snapshot.cache {
            cache.hitsPerLayer = stats.perLayer.map { $0?.hits ?? 0 }
            cache.missesPerLayer = stats.perLayer.map { $0?.misses ?? 0 }
            cache.evictionsPerLayer = stats.perLayer.map { $0?.evictions ?? 0 }
            cache.diskReadBytes = stats.total.bytesRead
            cache.prefetchWastedBytes = stats.total.wastedPrefetchBytes
            cache.prefetchesIssued = stats.total.prefetchesIssued
            cache.prefetchesInTime = stats.total.prefetchHits
            cache.prefetchesLate = stats.total.prefetchesLate
            cache.splitStarts = stats.total.splitStarts
            cache.skippedTokens = stats.total.skippedTokens
            cache.lowBitUses = stats.total.lowBitUses
            cache.lowBitPromotions = stats.total.lowBitPromotions
            cache.ioStallSeconds = stats.total.stallSeconds
            cache.cacheBytesUsed = stats.usedBytes
            cache.cacheBytesBudget = stats.budgetBytes
            cache.policyLeader = stats.policyLeader
        }
        cache.memoryBudgetBytes = snapshot.memoryBudgetBytes
        cache.recentHitRate = snapshot.recentHitRate
        if let registration = snapshot.readRegistration {
            cache.registeredReadBuffers = registration.registeredTargets
            cache.fixedReads = registration.fixedReads
            cache.plainReads = registration.plainReads
            cache.registrationRefused = registration.refusal != nil
        }
        if let auto = snapshot.prefetchAuto {
            cache.prefetchAuto = PrefetchAutoSnapshot(leader: auto.leader.rawValue, rounds: auto.rounds, lastMedianRatio: auto.lastMedianRatio,
                                                      stepsOn: auto.stepsOn, stepsOff: auto.stepsOff)
        }
        if let prediction = snapshot.prediction {
            cache.prefetchRecall = prediction.recall
            cache.prefetchPrecision = prediction.precision
            cache.shadowRuns = prediction.shadowRuns
            cache.shadowAddedGuesses = prediction.shadowAdded
        }
        metrics.updateExpertCache(cache)
        metrics.setScheduler(queueDepth: snapshot.engine.waitingRequests, runningSequences: snapshot.engine.runningSequences)
        metrics.setHeldResources(kvReservedBytes: snapshot.kvReservedBytes, pinnedExperts: snapshot.pinnedExperts)
        metrics.setThroughput(promptTokensPerSecond: snapshot.promptTokensPerSecond, decodeTokensPerSecond: snapshot.decodeTokensPerSecond)
    }

    static func engineStats(_ snapshot: RuntimeSnapshot) -> EngineStats {
        var stats = EngineStats()
        stats.promptTokensPerSecond = snapshot.promptTokensPerSecond
        stats.decodeTokensPerSecond = snapshot.decodeTokensPerSecond
        stats.cacheHitRate = snapshot.recentHitRate
        stats.runningSequences = snapshot.engine.runningSequences
        stats.queuedRequests = snapshot.engine.waitingRequests
        stats.expertUsage = snapshot.expertUsage
        stats.expertResident = snapshot.expertResident
        stats.cacheBytesBudget = snapshot.cache?.budgetBytes ?? 0
        stats.cacheBytesUsed = snapshot.cache?.usedBytes ?? 0
        stats.residentBytes = snapshot.residentBytes
        return stats
    }
}
