/// Counters of one layer, or of all layers together.
public struct ExpertCacheCounters: Codable, Sendable, Equatable {
    /// Demand requests that found the expert resident.
    public var hits = 0
    /// Demand requests that had to wait for a read (started by them or earlier).
    public var misses = 0
    /// Hits on an expert a prefetch loaded and nothing had used yet (included in `hits`).
    public var prefetchHits = 0
    /// Bytes read by reads that started as demand.
    public var demandBytes = 0
    /// Bytes read by reads that started as prefetch.
    public var prefetchBytes = 0
    /// Bytes read, demand and prefetch together.
    public var bytesRead: Int { demandBytes + prefetchBytes }
    /// Bytes of prefetched experts evicted before any use.
    public var wastedPrefetchBytes = 0
    /// Time requests spent blocked waiting for reads or room.
    public var stallSeconds = 0.0
    /// Experts evicted to make room.
    public var evictions = 0
    /// Prefetch reads queued.
    public var prefetchesIssued = 0
    /// Queued prefetches promoted to demand because a request needed them.
    public var prefetchesPromoted = 0
    /// Demands that found their expert being prefetched but not yet resident: right guesses
    /// that came late (counted in `misses`, not in `prefetchHits`; includes `prefetchesPromoted`).
    public var prefetchesLate = 0
    /// Queued prefetches cancelled before starting.
    public var prefetchesCancelled = 0
    /// Prefetch hints ignored for lack of evictable room.
    public var prefetchesDropped = 0
    /// Reads that failed.
    public var loadFailures = 0
    /// Tokens that left out at least one weak missing expert (`--skip-missing-below`).
    public var skippedTokens = 0
    /// (token, expert) pairs left out by `--skip-missing-below`.
    public var skippedExperts = 0
    /// Expert uses (an expert of one layer in one step) served by a low-bit copy (`--low-bit-misses`).
    public var lowBitUses = 0
    /// Full copies read in the background to replace a low-bit copy that stayed in use.
    public var lowBitPromotions = 0
    /// Bytes read by low-bit copies' reads (not in `demandBytes`).
    public var lowBitBytes = 0
    /// Seconds reads ran (from a reader taking the read to the checked expert), summed over
    /// reads: divided by the cache's `ioBusySeconds` it is the mean number of reads in flight.
    public var readSeconds = 0.0
    /// Seconds demand reads waited queued before a reader took them, summed over reads.
    public var demandQueuedSeconds = 0.0
    /// Experts a request began on before their down matrix had arrived (split reads).
    public var splitStarts = 0

    /// All zero.
    public init() {}

    /// hits / (hits + misses), 0 before any request.
    public var hitRate: Double { hits + misses > 0 ? Double(hits) / Double(hits + misses) : 0 }

    enum CodingKeys: String, CodingKey {
        case hits, misses, hitRate = "hit_rate", prefetchHits = "prefetch_hits"
        case demandBytes = "demand_bytes", prefetchBytes = "prefetch_bytes"
        case wastedPrefetchBytes = "wasted_prefetch_bytes", stallSeconds = "stall_seconds", evictions
        case prefetchesIssued = "prefetches_issued", prefetchesPromoted = "prefetches_promoted", prefetchesLate = "prefetches_late"
        case prefetchesCancelled = "prefetches_cancelled", prefetchesDropped = "prefetches_dropped"
        case loadFailures = "load_failures"
        case skippedTokens = "skipped_tokens", skippedExperts = "skipped_experts"
        case lowBitUses = "low_bit_uses", lowBitPromotions = "low_bit_promotions", lowBitBytes = "low_bit_bytes"
        case readSeconds = "read_seconds", demandQueuedSeconds = "demand_queued_seconds"
        case splitStarts = "split_starts"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        hits = try c.decode(Int.self, forKey: .hits)
        misses = try c.decode(Int.self, forKey: .misses)
        prefetchHits = try c.decode(Int.self, forKey: .prefetchHits)
        demandBytes = try c.decode(Int.self, forKey: .demandBytes)
        prefetchBytes = try c.decode(Int.self, forKey: .prefetchBytes)
        wastedPrefetchBytes = try c.decode(Int.self, forKey: .wastedPrefetchBytes)
        stallSeconds = try c.decode(Double.self, forKey: .stallSeconds)
        evictions = try c.decode(Int.self, forKey: .evictions)
        prefetchesIssued = try c.decode(Int.self, forKey: .prefetchesIssued)
        prefetchesPromoted = try c.decode(Int.self, forKey: .prefetchesPromoted)
        prefetchesLate = try c.decodeIfPresent(Int.self, forKey: .prefetchesLate) ?? 0
        prefetchesCancelled = try c.decode(Int.self, forKey: .prefetchesCancelled)
        prefetchesDropped = try c.decode(Int.self, forKey: .prefetchesDropped)
        loadFailures = try c.decode(Int.self, forKey: .loadFailures)
        skippedTokens = try c.decodeIfPresent(Int.self, forKey: .skippedTokens) ?? 0
        skippedExperts = try c.decodeIfPresent(Int.self, forKey: .skippedExperts) ?? 0
        lowBitUses = try c.decodeIfPresent(Int.self, forKey: .lowBitUses) ?? 0
        lowBitPromotions = try c.decodeIfPresent(Int.self, forKey: .lowBitPromotions) ?? 0
        lowBitBytes = try c.decodeIfPresent(Int.self, forKey: .lowBitBytes) ?? 0
        readSeconds = try c.decodeIfPresent(Double.self, forKey: .readSeconds) ?? 0
        demandQueuedSeconds = try c.decodeIfPresent(Double.self, forKey: .demandQueuedSeconds) ?? 0
        splitStarts = try c.decodeIfPresent(Int.self, forKey: .splitStarts) ?? 0
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(hits, forKey: .hits)
        try c.encode(misses, forKey: .misses)
        try c.encode(hitRate, forKey: .hitRate)
        try c.encode(prefetchHits, forKey: .prefetchHits)
        try c.encode(demandBytes, forKey: .demandBytes)
        try c.encode(prefetchBytes, forKey: .prefetchBytes)
        try c.encode(wastedPrefetchBytes, forKey: .wastedPrefetchBytes)
        try c.encode(stallSeconds, forKey: .stallSeconds)
        try c.encode(evictions, forKey: .evictions)
        try c.encode(prefetchesIssued, forKey: .prefetchesIssued)
        try c.encode(prefetchesPromoted, forKey: .prefetchesPromoted)
        try c.encode(prefetchesLate, forKey: .prefetchesLate)
        try c.encode(prefetchesCancelled, forKey: .prefetchesCancelled)
        try c.encode(prefetchesDropped, forKey: .prefetchesDropped)
        try c.encode(loadFailures, forKey: .loadFailures)
        try c.encode(skippedTokens, forKey: .skippedTokens)
        try c.encode(skippedExperts, forKey: .skippedExperts)
        try c.encode(lowBitUses, forKey: .lowBitUses)
        try c.encode(lowBitPromotions, forKey: .lowBitPromotions)
        try c.encode(lowBitBytes, forKey: .lowBitBytes)
        try c.encode(readSeconds, forKey: .readSeconds)
        try c.encode(demandQueuedSeconds, forKey: .demandQueuedSeconds)
        try c.encode(splitStarts, forKey: .splitStarts)
    }

    /// Adds `other` into these counters.
    public mutating func add(_ other: ExpertCacheCounters) {
        hits += other.hits
        misses += other.misses
        prefetchHits += other.prefetchHits
        demandBytes += other.demandBytes
        prefetchBytes += other.prefetchBytes
        wastedPrefetchBytes += other.wastedPrefetchBytes
        stallSeconds += other.stallSeconds
        evictions += other.evictions
        prefetchesIssued += other.prefetchesIssued
        prefetchesPromoted += other.prefetchesPromoted
        prefetchesLate += other.prefetchesLate
        prefetchesCancelled += other.prefetchesCancelled
        prefetchesDropped += other.prefetchesDropped
        loadFailures += other.loadFailures
        skippedTokens += other.skippedTokens
        skippedExperts += other.skippedExperts
        lowBitUses += other.lowBitUses
        lowBitPromotions += other.lowBitPromotions
        lowBitBytes += other.lowBitBytes
        readSeconds += other.readSeconds
        demandQueuedSeconds += other.demandQueuedSeconds
        splitStarts += other.splitStarts
    }
}

/// A snapshot of the cache's state and counters, as `generate` prints it in `stats` and the
/// server will export it.
public struct ExpertCacheStats: Codable, Sendable, Equatable {
    /// The eviction policy's name.
    public var policy: String
    /// The cache's byte budget.
    public var budgetBytes: Int
    /// Bytes held now (resident plus being read).
    public var usedBytes: Int
    /// The most bytes ever held.
    public var peakUsedBytes: Int
    /// Experts resident now.
    public var residentExperts: Int
    /// All layers together.
    public var total: ExpertCacheCounters
    /// Indexed by model layer; nil for layers the cache never served.
    public var perLayer: [ExpertCacheCounters?]
    /// Wall-clock seconds during which at least one read was running (the disk had work from
    /// the cache); the rest of a run the disk sat idle. Nil in snapshots from older builds.
    public var ioBusySeconds: Double? = nil
    /// The policy choosing victims now, where the policy switches between others (the default
    /// `sequence` policy: `fixed_recency` or `measured_recency`, `DuelingPolicy`); nil otherwise.
    public var policyLeader: String? = nil

    enum CodingKeys: String, CodingKey {
        case policy, budgetBytes = "budget_bytes", usedBytes = "used_bytes", peakUsedBytes = "peak_used_bytes"
        case residentExperts = "resident_experts", total, perLayer = "per_layer", ioBusySeconds = "io_busy_seconds"
        case policyLeader = "policy_leader"
    }
}
