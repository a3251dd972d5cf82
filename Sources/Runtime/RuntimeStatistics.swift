import ExpertCache
import ExpertPrediction
import Foundation
import InferenceEngine
import ModelFormats
import MoEModels

/// Counts how often each expert is routed to, for the dashboard's heatmap.
public final class ExpertUsageCounter: RoutingObserver, @unchecked Sendable {
    private let lock = NSLock()
    private var counts: [[Double]]

    public init(layerCount: Int, expertCount: Int) {
        counts = Array(repeating: Array(repeating: 0, count: expertCount), count: layerCount)
    }

    public func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) {
        lock.lock()
        defer { lock.unlock() }
        // Exponential decay keeps the map about recent traffic.
        for e in counts[layer].indices { counts[layer][e] *= 0.98 }
        for route in routes { for expert in route.experts { counts[layer][expert] += 1 } }
    }

    /// `[layer][expert]` recent routing counts.
    public var snapshot: [[Double]] {
        lock.lock()
        defer { lock.unlock() }
        return counts
    }
}

/// One sample of a running runtime: the engine's counters, rates since the previous sample,
/// the expert cache and the predictor. Everything a dashboard or `/metrics` shows; the HTTP
/// layer only renders it.
public struct RuntimeSnapshot: Sendable {
    /// The engine's cumulative counters.
    public var engine = EngineStatistics()
    /// Prompt (prefill) tokens per second since the previous sample.
    public var promptTokensPerSecond = 0.0
    /// Decode tokens per second since the previous sample.
    public var decodeTokensPerSecond = 0.0
    /// Expert-cache hit rate since the previous sample (the previous rate when nothing was looked up).
    public var recentHitRate = 0.0
    /// The expert cache's cumulative statistics, when experts are cached.
    public var cache: ExpertCacheStats?
    /// The predictor's cumulative totals, when it prefetches.
    public var prediction: LayerPredictionStatistics?
    /// What `--prefetch auto` has decided, when it runs.
    public var prefetchAuto: PrefetchSwitch.Summary?
    /// `[layer][expert]` recent routing counts.
    public var expertUsage: [[Double]] = []
    /// `[layer][expert]` whether each expert is resident now (empty for dense layers).
    public var expertResident: [[Bool]] = []
    /// The whole memory budget (0 without one).
    public var memoryBudgetBytes = 0
    /// The process's resident set now.
    public var residentBytes = 0
    /// KV cache bytes reserved by running sequences (0 when idle: more after load ends is a leak).
    public var kvReservedBytes = 0
    /// Expert pins held in the cache (0 when idle).
    public var pinnedExperts = 0
    /// The io_uring expert reader's buffer registration (nil with the thread-pool reader).
    public var readRegistration: UringFileReader.RegistrationStatistics?

    public init() {}
}

/// Samples a runtime and its engine once a second on its own thread; each sample's rates are
/// differences from the previous one. Readers take `latest` under a lock.
public final class RuntimeMonitor: @unchecked Sendable {
    private let engine: Engine
    private let runtime: ModelRuntime
    private let usage: ExpertUsageCounter
    private let lock = NSLock()
    private var latestSnapshot = RuntimeSnapshot()
    private var previous: (time: Double, prompt: Int, generated: Int, hits: Int, misses: Int)?

    /// A monitor of `runtime` and `engine`; chains a usage counter after the runtime's predictor.
    public init(engine: Engine, runtime: ModelRuntime) {
        self.engine = engine
        self.runtime = runtime
        let config = runtime.model.config
        usage = ExpertUsageCounter(layerCount: config.layerCount, expertCount: config.expertCount)
        runtime.chain(usage)
    }

    /// The most recent sample.
    public var latest: RuntimeSnapshot { lock.withLock { latestSnapshot } }

    /// Samples once a second forever, calling `onSample` with each sample (on the sampling thread).
    public func start(onSample: @escaping @Sendable (RuntimeSnapshot) -> Void) {
        let thread = Thread { [self] in
            while true {
                onSample(sample())
                Thread.sleep(forTimeInterval: 1)
            }
        }
        thread.name = "moe-stats"
        thread.start()
    }

    /// Takes a sample now and makes it the latest.
    @discardableResult
    public func sample() -> RuntimeSnapshot {
        let now = Date().timeIntervalSince1970
        let counters = engine.currentStatistics
        let cacheStats = runtime.cache?.statistics()
        let hits = cacheStats?.total.hits ?? 0, misses = cacheStats?.total.misses ?? 0
        var snapshot = RuntimeSnapshot()
        snapshot.engine = counters
        let previousRate = lock.withLock { latestSnapshot.recentHitRate }
        if let previous {
            let seconds = max(now - previous.time, 1e-3)
            snapshot.promptTokensPerSecond = Double(counters.promptTokens - previous.prompt) / seconds
            snapshot.decodeTokensPerSecond = Double(counters.generatedTokens - previous.generated) / seconds
            let lookups = (hits - previous.hits) + (misses - previous.misses)
            snapshot.recentHitRate = lookups > 0 ? Double(hits - previous.hits) / Double(lookups) : previousRate
        }
        previous = (now, counters.promptTokens, counters.generatedTokens, hits, misses)
        snapshot.expertUsage = usage.snapshot
        let config = runtime.model.config
        if let cache = runtime.cache {
            snapshot.expertResident = (0..<config.layerCount).map { layer in
                config.isMoELayer(layer) ? (0..<config.expertCount).map { cache.isResident(layer: layer, expert: $0) } : []
            }
        }
        snapshot.cache = cacheStats
        // A copy taken under the predictor's lock: the engine thread updates it meanwhile.
        snapshot.prediction = runtime.predictor?.statistics.total
        snapshot.prefetchAuto = runtime.prefetchSwitch?.summary
        snapshot.memoryBudgetBytes = runtime.autoBudget?.budgetBytes ?? runtime.plan?.budgetBytes ?? 0
        snapshot.residentBytes = ProcessMemory.residentBytes() ?? 0
        snapshot.kvReservedBytes = engine.reservedKVBytes
        snapshot.pinnedExperts = runtime.cache?.pinCount() ?? 0
        snapshot.readRegistration = (runtime.expertStore?.expertReader as? UringFileReader)?.registrationStatistics
        lock.withLock { latestSnapshot = snapshot }
        return snapshot
    }
}
