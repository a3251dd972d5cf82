import CoreMetrics
import Foundation
import InferenceEngine
import Prometheus

/// Cumulative expert-cache and prefetch figures as the engine keeps them. The engine passes
/// its running totals; `ServerMetrics` turns differences into counter increments, so the engine
/// never has to remember what it already reported.
public struct ExpertCacheSnapshot: Sendable, Equatable {
    /// Hits per layer since start.
    public var hitsPerLayer: [Int] = []
    /// Misses per layer since start.
    public var missesPerLayer: [Int] = []
    /// Evictions per layer since start.
    public var evictionsPerLayer: [Int] = []
    /// Hit rate over a recent window, 0...1 (the engine chooses the window).
    public var recentHitRate: Double = 0
    /// Fraction of needed experts that the predictor had prefetched, 0...1.
    public var prefetchRecall: Double = 0
    /// Fraction of prefetched experts that were then used, 0...1.
    public var prefetchPrecision: Double = 0
    /// Bytes prefetched but evicted unused, since start.
    public var prefetchWastedBytes: Int = 0
    /// Prefetches issued, since start.
    public var prefetchesIssued: Int = 0
    /// Prefetched experts resident when a demand came (in time), since start.
    public var prefetchesInTime: Int = 0
    /// Prefetched experts a demand found still being read (right but late), since start.
    public var prefetchesLate: Int = 0
    /// Experts begun on their gate and up matrices before the down matrix had arrived (split reads), since start.
    public var splitStarts: Int = 0
    /// Runs of the next layer's shadow (`shadow_routing`), since start.
    public var shadowRuns: Int = 0
    /// Guesses those runs added that no earlier guess had made, since start.
    public var shadowAddedGuesses: Int = 0
    /// Bytes read from the expert store, since start.
    public var diskReadBytes: Int = 0
    /// The eviction policy choosing victims now, where the policy switches between others
    /// (`ExpertCacheStats.policyLeader`); nil otherwise.
    public var policyLeader: String? = nil
    /// What `prefetch = "auto"` has decided, when it runs.
    public var prefetchAuto: PrefetchAutoSnapshot? = nil
    /// Tokens that skipped at least one weak missing expert (`skip_missing_below`), since start.
    public var skippedTokens: Int = 0
    /// Expert uses served by a low-bit copy (`low_bit_misses`), since start.
    public var lowBitUses: Int = 0
    /// Full copies read to replace a low-bit copy that stayed in use, since start.
    public var lowBitPromotions: Int = 0
    /// Seconds the engine waited on expert reads, since start.
    public var ioStallSeconds: Double = 0
    /// Bytes held by the cache now.
    public var cacheBytesUsed: Int = 0
    /// The cache's byte budget.
    public var cacheBytesBudget: Int = 0
    /// The whole process's memory budget (`memory_budget`), of which the cache has its share.
    public var memoryBudgetBytes: Int = 0
    /// Expert buffers registered with the io_uring reader now.
    public var registeredReadBuffers: Int = 0
    /// Expert read pieces submitted as `READ_FIXED` (into registered buffers) and as plain reads, since start.
    public var fixedReads: Int = 0
    public var plainReads: Int = 0
    /// Whether the kernel refused a registration (the memlock limit), after which none are tried.
    public var registrationRefused = false

    /// An empty snapshot.
    public init() {}
}

/// Every Prometheus metric of the server, created through swift-metrics on a private
/// swift-prometheus registry (private so several servers, as in tests, never share counters).
/// Thread-safe. Names are documented in docs/METRICS.md.
public final class ServerMetrics: @unchecked Sendable {
    /// The registry `/metrics` renders.
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let lock = NSLock()

    private var requestCounters: [String: CoreMetrics.Counter] = [:]
    private let promptTokens: CoreMetrics.Counter
    /// Prompt tokens not run: taken from the prompt cache or an `n` > 1 choice's shared prefill.
    private let promptCachedTokens: CoreMetrics.Counter
    private let generatedTokens: CoreMetrics.Counter
    private let promptTokensPerSecond: CoreMetrics.Gauge
    private let decodeTokensPerSecond: CoreMetrics.Gauge
    private let queueDepth: CoreMetrics.Gauge
    private let runningSequences: CoreMetrics.Gauge
    private let requestsInFlight: CoreMetrics.Gauge
    private let openConnections: CoreMetrics.Gauge
    private let shedConnections: CoreMetrics.Counter
    private let heldRequestBytes: CoreMetrics.Gauge
    private let kvReservedBytes: CoreMetrics.Gauge
    private let pinnedExperts: CoreMetrics.Gauge
    private let residentBytes: CoreMetrics.Gauge

    private let cacheHits: CoreMetrics.Counter
    private let cacheMisses: CoreMetrics.Counter
    private let cacheEvictions: CoreMetrics.Counter
    private var layerHits: [CoreMetrics.Counter] = []
    private var layerMisses: [CoreMetrics.Counter] = []
    private var layerEvictions: [CoreMetrics.Counter] = []
    private let hitRate: CoreMetrics.Gauge
    private let prefetchRecall: CoreMetrics.Gauge
    private let prefetchPrecision: CoreMetrics.Gauge
    private let prefetchWasted: CoreMetrics.Counter
    private let prefetchesIssued: CoreMetrics.Counter
    private let prefetchesInTime: CoreMetrics.Counter
    private let prefetchesLate: CoreMetrics.Counter
    private let splitStarts: CoreMetrics.Counter
    private let shadowRuns: CoreMetrics.Counter
    private let shadowAdded: CoreMetrics.Counter
    private let skippedTokens: CoreMetrics.Counter
    private let lowBitUses: CoreMetrics.Counter
    private let lowBitPromotions: CoreMetrics.Counter
    private let diskRead: CoreMetrics.Counter
    private let ioStall: CoreMetrics.FloatingPointCounter
    private let cacheUsed: CoreMetrics.Gauge
    private let cacheBudget: CoreMetrics.Gauge
    private let memoryBudget: CoreMetrics.Gauge
    private let registeredReadBuffers: CoreMetrics.Gauge
    private let fixedReads: CoreMetrics.Counter
    private let plainReads: CoreMetrics.Counter
    private let registrationRefused: CoreMetrics.Gauge
    private var lastSnapshot = ExpertCacheSnapshot()
    /// One gauge per policy that has led (a handful at most), 1 for the one leading now.
    private var policyLeaders: [String: CoreMetrics.Gauge] = [:]
    /// Under `prefetch = "auto"` only (made at its first sample, so that other servers do not
    /// show them).
    private var prefetchAutoMetrics: PrefetchAutoMetrics?

    /// Metrics on a fresh registry.
    public init() {
        registry = PrometheusCollectorRegistry()
        let factory = PrometheusMetricsFactory(registry: registry)
        self.factory = factory
        func counter(_ name: String) -> CoreMetrics.Counter { CoreMetrics.Counter(label: name, factory: factory) }
        func gauge(_ name: String) -> CoreMetrics.Gauge { CoreMetrics.Gauge(label: name, factory: factory) }
        promptTokens = counter("moe_prompt_tokens_total")
        promptCachedTokens = counter("moe_prompt_cached_tokens_total")
        generatedTokens = counter("moe_generated_tokens_total")
        promptTokensPerSecond = gauge("moe_prompt_tokens_per_second")
        decodeTokensPerSecond = gauge("moe_decode_tokens_per_second")
        queueDepth = gauge("moe_queue_depth")
        runningSequences = gauge("moe_running_sequences")
        requestsInFlight = gauge("moe_http_generation_requests_in_flight")
        openConnections = gauge("moe_http_open_connections")
        shedConnections = counter("moe_http_shed_connections_total")
        heldRequestBytes = gauge("moe_http_held_request_bytes")
        kvReservedBytes = gauge("moe_kv_reserved_bytes")
        pinnedExperts = gauge("moe_expert_pins")
        residentBytes = gauge("moe_resident_memory_bytes")
        cacheHits = counter("moe_expert_cache_hits_total")
        cacheMisses = counter("moe_expert_cache_misses_total")
        cacheEvictions = counter("moe_expert_cache_evictions_total")
        hitRate = gauge("moe_expert_cache_hit_rate")
        prefetchRecall = gauge("moe_prefetch_recall")
        prefetchPrecision = gauge("moe_prefetch_precision")
        prefetchWasted = counter("moe_prefetch_wasted_bytes_total")
        prefetchesIssued = counter("moe_prefetches_issued_total")
        prefetchesInTime = counter("moe_prefetches_in_time_total")
        prefetchesLate = counter("moe_prefetches_late_total")
        splitStarts = counter("moe_expert_split_starts_total")
        shadowRuns = counter("moe_prefetch_shadow_runs_total")
        shadowAdded = counter("moe_prefetch_shadow_added_total")
        skippedTokens = counter("moe_expert_skipped_tokens_total")
        lowBitUses = counter("moe_expert_low_bit_uses_total")
        lowBitPromotions = counter("moe_expert_low_bit_promotions_total")
        diskRead = counter("moe_disk_read_bytes_total")
        ioStall = CoreMetrics.FloatingPointCounter(label: "moe_io_stall_seconds_total", dimensions: [], factory: factory)
        cacheUsed = gauge("moe_expert_cache_bytes_used")
        cacheBudget = gauge("moe_expert_cache_bytes_budget")
        memoryBudget = gauge("moe_memory_budget_bytes")
        registeredReadBuffers = gauge("moe_io_registered_buffers")
        fixedReads = counter("moe_io_fixed_reads_total")
        plainReads = counter("moe_io_plain_reads_total")
        registrationRefused = gauge("moe_io_registration_refused")
    }

    /// Counts one HTTP response. `route` is the route pattern (never the raw path, which would
    /// let clients create unbounded label values).
    public func recordRequest(route: String, status: Int) {
        let key = "\(route) \(status)"
        lock.lock()
        let counter: CoreMetrics.Counter
        if let existing = requestCounters[key] {
            counter = existing
        } else {
            counter = CoreMetrics.Counter(label: "moe_http_requests_total",
                                          dimensions: [("route", route), ("status", String(status))], factory: factory)
            requestCounters[key] = counter
        }
        lock.unlock()
        counter.increment()
    }

    /// Counts the tokens of a finished request and updates the per-second gauges with its rates.
    public func recordCompletion(usage: Usage, timings: Timings) {
        promptTokens.increment(by: usage.promptTokens)
        promptCachedTokens.increment(by: usage.cachedTokens)
        generatedTokens.increment(by: usage.completionTokens)
        if timings.promptPerSecond > 0 { promptTokensPerSecond.record(timings.promptPerSecond) }
        if timings.predictedPerSecond > 0 { decodeTokensPerSecond.record(timings.predictedPerSecond) }
    }

    /// Engine-wide throughput, when the engine measures it itself (overrides the per-request figures).
    public func setThroughput(promptTokensPerSecond prompt: Double, decodeTokensPerSecond decode: Double) {
        promptTokensPerSecond.record(prompt)
        decodeTokensPerSecond.record(decode)
    }

    /// Scheduler state: requests waiting and sequences running.
    public func setScheduler(queueDepth depth: Int, runningSequences running: Int) {
        queueDepth.record(Double(depth))
        runningSequences.record(Double(running))
    }

    /// Generation requests the HTTP layer has submitted and not seen finish.
    func setRequestsInFlight(_ n: Int) { requestsInFlight.record(Double(n)) }

    /// Open client connections.
    func setOpenConnections(_ n: Int) { openConnections.record(Double(n)) }

    /// An idle connection was closed to make room for a new one at `max_connections`.
    func recordShedConnection() { shedConnections.increment() }

    /// Resources held by running work, which must return to 0 when the server is idle: KV cache
    /// bytes reserved by the scheduler and expert pins in the cache.
    public func setHeldResources(kvReservedBytes: Int, pinnedExperts: Int) {
        self.kvReservedBytes.record(Double(kvReservedBytes))
        self.pinnedExperts.record(Double(pinnedExperts))
    }

    /// Request bytes held (partial requests and bodies waiting for or being decoded).
    func setHeldRequestBytes(_ n: Int) { heldRequestBytes.record(Double(n)) }

    /// Records what `low_bit_misses = auto` chose at start: the disk's measured bandwidth and
    /// the expert compute rate (bytes/s, 0 when unmeasured) and whether the slow-disk setting won.
    public func setLowBitAuto(diskBytesPerSecond: Double?, computeBytesPerSecond: Double?, slowDisk: Bool) {
        func gauge(_ name: String) -> CoreMetrics.Gauge { CoreMetrics.Gauge(label: name, factory: factory) }
        gauge("moe_low_bit_auto_disk_bytes_per_second").record(diskBytesPerSecond ?? 0)
        gauge("moe_low_bit_auto_compute_bytes_per_second").record(computeBytesPerSecond ?? 0)
        gauge("moe_low_bit_auto_slow_disk").record(slowDisk ? 1 : 0)
    }

    /// Feeds the expert-cache figures; call as often as convenient (once per engine step is fine).
    public func updateExpertCache(_ s: ExpertCacheSnapshot) {
        lock.lock()
        defer { lock.unlock() }
        let layers = max(s.hitsPerLayer.count, s.missesPerLayer.count, s.evictionsPerLayer.count)
        while layerHits.count < layers {
            let dims = [("layer", String(layerHits.count))]
            layerHits.append(CoreMetrics.Counter(label: "moe_expert_cache_layer_hits_total", dimensions: dims, factory: factory))
            layerMisses.append(CoreMetrics.Counter(label: "moe_expert_cache_layer_misses_total", dimensions: dims, factory: factory))
            layerEvictions.append(CoreMetrics.Counter(label: "moe_expert_cache_layer_evictions_total", dimensions: dims, factory: factory))
        }
        func delta(_ new: [Int], _ old: [Int], _ i: Int) -> Int {
            let n = i < new.count ? new[i] : 0
            let o = i < old.count ? old[i] : 0
            return max(0, n - o)
        }
        var hits = 0, misses = 0, evictions = 0
        for layer in 0..<layers {
            let h = delta(s.hitsPerLayer, lastSnapshot.hitsPerLayer, layer)
            let m = delta(s.missesPerLayer, lastSnapshot.missesPerLayer, layer)
            let e = delta(s.evictionsPerLayer, lastSnapshot.evictionsPerLayer, layer)
            if h > 0 { layerHits[layer].increment(by: h) }
            if m > 0 { layerMisses[layer].increment(by: m) }
            if e > 0 { layerEvictions[layer].increment(by: e) }
            hits += h; misses += m; evictions += e
        }
        // Touch every counter once so the totals appear (as 0) before the first hit.
        cacheHits.increment(by: hits)
        cacheMisses.increment(by: misses)
        cacheEvictions.increment(by: evictions)
        prefetchWasted.increment(by: max(0, s.prefetchWastedBytes - lastSnapshot.prefetchWastedBytes))
        prefetchesIssued.increment(by: max(0, s.prefetchesIssued - lastSnapshot.prefetchesIssued))
        prefetchesInTime.increment(by: max(0, s.prefetchesInTime - lastSnapshot.prefetchesInTime))
        prefetchesLate.increment(by: max(0, s.prefetchesLate - lastSnapshot.prefetchesLate))
        splitStarts.increment(by: max(0, s.splitStarts - lastSnapshot.splitStarts))
        shadowRuns.increment(by: max(0, s.shadowRuns - lastSnapshot.shadowRuns))
        shadowAdded.increment(by: max(0, s.shadowAddedGuesses - lastSnapshot.shadowAddedGuesses))
        skippedTokens.increment(by: max(0, s.skippedTokens - lastSnapshot.skippedTokens))
        lowBitUses.increment(by: max(0, s.lowBitUses - lastSnapshot.lowBitUses))
        lowBitPromotions.increment(by: max(0, s.lowBitPromotions - lastSnapshot.lowBitPromotions))
        diskRead.increment(by: max(0, s.diskReadBytes - lastSnapshot.diskReadBytes))
        ioStall.increment(by: max(0, s.ioStallSeconds - lastSnapshot.ioStallSeconds))
        hitRate.record(s.recentHitRate)
        prefetchRecall.record(s.prefetchRecall)
        prefetchPrecision.record(s.prefetchPrecision)
        cacheUsed.record(Double(s.cacheBytesUsed))
        cacheBudget.record(Double(s.cacheBytesBudget))
        memoryBudget.record(Double(s.memoryBudgetBytes))
        registeredReadBuffers.record(Double(s.registeredReadBuffers))
        fixedReads.increment(by: max(0, s.fixedReads - lastSnapshot.fixedReads))
        plainReads.increment(by: max(0, s.plainReads - lastSnapshot.plainReads))
        registrationRefused.record(s.registrationRefused ? 1 : 0)
        if let leader = s.policyLeader, policyLeaders[leader] == nil {
            policyLeaders[leader] = CoreMetrics.Gauge(label: "moe_expert_cache_policy_leader", dimensions: [("policy", leader)], factory: factory)
        }
        for (name, gauge) in policyLeaders { gauge.record(name == s.policyLeader ? 1 : 0) }
        if let auto = s.prefetchAuto {
            if prefetchAutoMetrics == nil { prefetchAutoMetrics = PrefetchAutoMetrics(factory: factory) }
            prefetchAutoMetrics!.record(auto, previous: lastSnapshot.prefetchAuto)
        }
        lastSnapshot = s
    }

    /// The Prometheus text exposition, after sampling the resident set size.
    public func exposition() -> String {
        if let rss = ServerMetrics.residentSetBytes() { residentBytes.record(Double(rss)) }
        return registry.emitToString()
    }

    /// The resident set now (Linux); nil elsewhere. One reader of /proc for the whole process:
    /// `ProcessMemory`, which the memory plan uses too.
    public static func residentSetBytes() -> Int? { ProcessMemory.residentBytes() }
}

/// What `prefetch = "auto"` (`PrefetchSwitch`) has decided, as `/metrics` receives it.
public struct PrefetchAutoSnapshot: Sendable, Equatable {
    /// "on" or "off": the arm that runs outside the measuring rounds.
    public var leader: String
    /// Rounds finished since start.
    public var rounds: Int
    /// The last round's median on ÷ off seconds per decode step of one batch size (below 1: prefetching was faster).
    public var lastMedianRatio: Double?
    /// Decode steps run with and without prefetching, since start.
    public var stepsOn: Int
    public var stepsOff: Int
    public init(leader: String, rounds: Int, lastMedianRatio: Double?, stepsOn: Int, stepsOff: Int) {
        self.leader = leader
        self.rounds = rounds
        self.lastMedianRatio = lastMedianRatio
        self.stepsOn = stepsOn
        self.stepsOff = stepsOff
    }
}

/// The `moe_prefetch_auto_*` series.
private struct PrefetchAutoMetrics {
    let leaderOn: CoreMetrics.Gauge
    let leaderOff: CoreMetrics.Gauge
    let rounds: CoreMetrics.Counter
    let stepsOn: CoreMetrics.Counter
    let stepsOff: CoreMetrics.Counter
    /// Made when the first round ends: before that no ratio was measured.
    var lastRatio: CoreMetrics.Gauge?
    let factory: PrometheusMetricsFactory

    init(factory: PrometheusMetricsFactory) {
        self.factory = factory
        leaderOn = CoreMetrics.Gauge(label: "moe_prefetch_auto_leader", dimensions: [("arm", "on")], factory: factory)
        leaderOff = CoreMetrics.Gauge(label: "moe_prefetch_auto_leader", dimensions: [("arm", "off")], factory: factory)
        rounds = CoreMetrics.Counter(label: "moe_prefetch_auto_rounds_total", dimensions: [], factory: factory)
        stepsOn = CoreMetrics.Counter(label: "moe_prefetch_auto_decode_steps_total", dimensions: [("arm", "on")], factory: factory)
        stepsOff = CoreMetrics.Counter(label: "moe_prefetch_auto_decode_steps_total", dimensions: [("arm", "off")], factory: factory)
    }

    mutating func record(_ s: PrefetchAutoSnapshot, previous: PrefetchAutoSnapshot?) {
        leaderOn.record(s.leader == "on" ? 1 : 0)
        leaderOff.record(s.leader == "off" ? 1 : 0)
        rounds.increment(by: max(0, s.rounds - (previous?.rounds ?? 0)))
        stepsOn.increment(by: max(0, s.stepsOn - (previous?.stepsOn ?? 0)))
        stepsOff.increment(by: max(0, s.stepsOff - (previous?.stepsOff ?? 0)))
        if let ratio = s.lastMedianRatio {
            if lastRatio == nil { lastRatio = CoreMetrics.Gauge(label: "moe_prefetch_auto_last_ratio", dimensions: [], factory: factory) }
            lastRatio!.record(ratio)
        }
    }
}
