import ExpertCache
import ExpertPrediction
import Foundation
import HTTPServer
import InferenceEngine
import MoEModels
import Tokenization

/// The real backend `serve` attaches once the model has loaded: the engine over the model
/// (experts through the offloading cache under the memory budget), the tokenizer as the
/// server's prompt codec, and live statistics for `/metrics` and the dashboard.
enum ServeBackend {
    /// Memory the server itself uses under load beyond the model: connection buffers,
    /// responses being written, per-request engine state, metrics. Measured with
    /// `scripts/load_test.sh 60 16` on the demo model: the resident set rose 10 MiB above the
    /// model's plan without this reservation; with it the peak stays inside the budget.
    static let serverReserveBytes = 12 << 20

    /// Loads the model named by `config` (the bundled demo model when none) and starts the engine.
    static func make(_ config: ServerConfig, metrics: ServerMetrics) throws -> (ModelBackend, Engine) {
        guard let url = config.model.map({ URL(fileURLWithPath: $0) }) ?? BundledModel.location else {
            throw CommandError("no model given and the bundled demo model was not found (set MOE_DEMO_MODEL or pass --model)")
        }
        let maxSequences = 8
        let options = try RuntimeOptions.parse(["--memory-budget", String(config.memoryBudget)])
        let runtime = try options.open(at: url, maxSequences: maxSequences, extraRuntimeBytes: Self.serverReserveBytes)
        runtime.cache?.skipMissingBelow = config.skipMissingBelow
        guard let tokenizer = runtime.tokenizer else {
            throw CommandError("\(url.path): serving needs a tokenizer.json beside the model")
        }
        let usage = ExpertUsageCounter(layerCount: runtime.model.config.layerCount, expertCount: runtime.model.config.expertCount)
        runtime.chain(usage)
        let kvBudget = runtime.plan?.kvCacheBytes
            ?? runtime.model.config.maxPositionEmbeddings * maxSequences * Engine.defaultLimits(for: runtime.model, kvCacheBudgetBytes: 0).kvBytesPerToken
        let limits = Engine.defaultLimits(for: runtime.model, kvCacheBudgetBytes: kvBudget, maxRunningSequences: maxSequences,
                                          maxWaitingRequests: config.maxQueuedRequests)
        let engine = Engine(model: runtime.model, limits: limits, decode: { [tokenizer] in tokenizer.decode($0, skipSpecialTokens: true) })
        engine.start()
        let name = url.lastPathComponent
        let stats = LiveStatistics(engine: engine, runtime: runtime, usage: usage, metrics: metrics)
        stats.startFeedingMetrics()
        let codec = TokenizerCodec(tokenizer: tokenizer, contextLength: runtime.model.config.maxPositionEmbeddings,
                                   modelName: name, extraStopIds: Set(runtime.model.config.eosTokenIds))
        return (ModelBackend(service: engine, codec: codec, stats: stats), engine)
    }
}

/// The tokenizer and chat template as the HTTP layer's `PromptCodec`.
struct TokenizerCodec: PromptCodec {
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
}

/// Counts how often each expert is routed to, for the dashboard's heatmap.
final class ExpertUsageCounter: RoutingObserver, @unchecked Sendable {
    private let lock = NSLock()
    private var counts: [[Double]]

    init(layerCount: Int, expertCount: Int) {
        counts = Array(repeating: Array(repeating: 0, count: expertCount), count: layerCount)
    }

    func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) {
        lock.lock()
        defer { lock.unlock() }
        // Exponential decay keeps the map about recent traffic.
        for e in counts[layer].indices { counts[layer][e] *= 0.98 }
        for route in routes { for expert in route.experts { counts[layer][expert] += 1 } }
    }

    var snapshot: [[Double]] {
        lock.lock()
        defer { lock.unlock() }
        return counts
    }
}

/// Samples the engine and the cache once a second: rates from differences, fed to the
/// Prometheus metrics and returned to the dashboard.
final class LiveStatistics: StatsProvider, @unchecked Sendable {
    private let engine: Engine
    private let runtime: ModelRuntime
    private let usage: ExpertUsageCounter
    private let metrics: ServerMetrics
    private let lock = NSLock()
    private var latest = EngineStats()
    private var previous: (time: Double, prompt: Int, generated: Int, hits: Int, misses: Int)?

    init(engine: Engine, runtime: ModelRuntime, usage: ExpertUsageCounter, metrics: ServerMetrics) {
        self.engine = engine
        self.runtime = runtime
        self.usage = usage
        self.metrics = metrics
    }

    func currentStats() -> EngineStats {
        lock.lock()
        defer { lock.unlock() }
        return latest
    }

    func startFeedingMetrics() {
        let thread = Thread { [self] in
            while true {
                sample()
                Thread.sleep(forTimeInterval: 1)
            }
        }
        thread.name = "moe-stats"
        thread.start()
    }

    private func sample() {
        let now = Date().timeIntervalSince1970
        let counters = engine.currentStatistics
        let cacheStats = runtime.cache?.statistics()
        let hits = cacheStats?.total.hits ?? 0, misses = cacheStats?.total.misses ?? 0
        var stats = EngineStats()
        if let previous {
            let seconds = max(now - previous.time, 1e-3)
            stats.promptTokensPerSecond = Double(counters.promptTokens - previous.prompt) / seconds
            stats.decodeTokensPerSecond = Double(counters.generatedTokens - previous.generated) / seconds
            let lookups = (hits - previous.hits) + (misses - previous.misses)
            stats.cacheHitRate = lookups > 0 ? Double(hits - previous.hits) / Double(lookups) : (lock.withLock { latest.cacheHitRate })
        }
        previous = (now, counters.promptTokens, counters.generatedTokens, hits, misses)
        stats.runningSequences = counters.runningSequences
        stats.queuedRequests = counters.waitingRequests
        stats.expertUsage = usage.snapshot
        let config = runtime.model.config
        if let cache = runtime.cache {
            stats.expertResident = (0..<config.layerCount).map { layer in
                config.isMoELayer(layer) ? (0..<config.expertCount).map { cache.isResident(layer: layer, expert: $0) } : []
            }
            stats.cacheBytesBudget = cacheStats?.budgetBytes ?? 0
            stats.cacheBytesUsed = cacheStats?.usedBytes ?? 0
        }
        stats.residentBytes = ServerMetrics.residentSetBytes() ?? 0

        var snapshot = ExpertCacheSnapshot()
        if let cacheStats {
            snapshot.hitsPerLayer = cacheStats.perLayer.map { $0?.hits ?? 0 }
            snapshot.missesPerLayer = cacheStats.perLayer.map { $0?.misses ?? 0 }
            snapshot.evictionsPerLayer = cacheStats.perLayer.map { $0?.evictions ?? 0 }
            snapshot.diskReadBytes = cacheStats.total.demandBytes + cacheStats.total.prefetchBytes
            snapshot.prefetchWastedBytes = cacheStats.total.wastedPrefetchBytes
            snapshot.prefetchesIssued = cacheStats.total.prefetchesIssued
            snapshot.prefetchesInTime = cacheStats.total.prefetchHits
            snapshot.prefetchesLate = cacheStats.total.prefetchesLate
            snapshot.skippedTokens = cacheStats.total.skippedTokens
            snapshot.ioStallSeconds = cacheStats.total.stallSeconds
            snapshot.cacheBytesUsed = stats.cacheBytesUsed
            snapshot.cacheBytesBudget = stats.cacheBytesBudget
        }
        snapshot.recentHitRate = stats.cacheHitRate
        if let prediction = runtime.predictor?.statistics.total {
            snapshot.prefetchRecall = prediction.recall
            snapshot.prefetchPrecision = prediction.precision
        }
        metrics.updateExpertCache(snapshot)
        metrics.setScheduler(queueDepth: counters.waitingRequests, runningSequences: counters.runningSequences)
        metrics.setThroughput(promptTokensPerSecond: stats.promptTokensPerSecond, decodeTokensPerSecond: stats.decodeTokensPerSecond)
        lock.lock()
        latest = stats
        lock.unlock()
    }
}
