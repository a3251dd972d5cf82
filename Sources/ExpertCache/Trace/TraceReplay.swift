/// Replays a routing trace through a cache policy, counting hits, as the issue specifies:
/// each token's experts of one layer are requested together and must all be resident at
/// once (so the ones already resident are pinned before any miss evicts); caches start cold
/// and persist across sequences; a null layer makes no request. The policy hears each token's
/// routing as its sequence's (`CachePolicy.sequence(_:routedTo:layer:)`) after the token's
/// request, and that a sequence ended after its last token, as a server's engine reports them.
///
/// Two pools: `perLayer` gives each layer its own cache of C experts (the format's
/// definition, and what `scripts/replay_trace.py` reproduces); `global` gives all recorded
/// layers one shared pool of C × layers slots with floors, which is where layer-aware
/// policies (Fate) differ from the rest. Belady is optimal within each pool kind.
public enum TraceReplay {
    /// How the cache is partitioned.
    public enum Pool: String, Codable, Sendable {
        /// One cache of C experts per layer.
        case perLayer = "per_layer"
        /// One pool of C × recorded layers experts, each layer keeping a floor.
        case global
    }

    /// Hit counts of one replay.
    public struct Result: Codable, Sendable, Equatable {
        /// hits / requests over all layers.
        public var hitRate: Double
        /// Per layer slot: its hit rate, nil where nothing was requested.
        public var perLayer: [Double?]
        /// Expert requests that found the expert resident.
        public var hits: Int
        /// Expert requests (distinct experts per token and layer).
        public var requests: Int
        /// The pool kind replayed.
        public var pool: Pool

        enum CodingKeys: String, CodingKey {
            case hitRate = "hit_rate", perLayer = "per_layer", hits, requests, pool
        }
    }

    /// Replays `trace` through `policy` with `cachePerLayer` slots per layer (per-layer pool)
    /// or `cachePerLayer × recorded layers` shared slots with floors of `floorSlots`.
    public static func run(_ trace: RoutingTrace, policy: any CachePolicy, cachePerLayer: Int,
                           pool: Pool = .perLayer, floorSlots: Int = 0) throws -> Result {
        let layerCount = trace.layerCount
        let recorded = trace.recordedLayers.count
        let topK = trace.maxExpertsPerToken
        guard cachePerLayer >= topK else {
            throw TraceError("a cache of \(cachePerLayer) experts per layer cannot hold the \(topK) experts one token uses in one layer")
        }
        var book: CacheBookkeeping
        switch pool {
        case .perLayer:
            book = CacheBookkeeping(budgetBytes: Int.max, layerBudgetBytes: cachePerLayer, policy: policy)
        case .global:
            book = CacheBookkeeping(budgetBytes: cachePerLayer * recorded, floorSlots: floorSlots, policy: policy)
        }
        let nextUses = nextUseTimes(trace)
        let lastTokenOfSequence = Dictionary(trace.tokens.enumerated().map { ($1.seq, $0) }, uniquingKeysWith: max)
        var requestIndex = 0
        var hits = [Int](repeating: 0, count: layerCount)
        var requests = [Int](repeating: 0, count: layerCount)
        for (tokenIndex, token) in trace.tokens.enumerated() {
            defer { if lastTokenOfSequence[token.seq] == tokenIndex { book.policy.sequenceEnded(token.seq) } }
            for (layer, routed) in token.layers.enumerated() {
                guard let routed else { continue }
                let group = distinct(routed).map { ExpertKey(layer: layer, expert: $0) }
                var misses: [(ExpertKey, Int)] = []
                // Residents first: they are pinned before any miss can evict them.
                for key in group {
                    let nextUse = nextUses[requestIndex]
                    requestIndex += 1
                    requests[layer] += 1
                    if book.entry(key) != nil {
                        hits[layer] += 1
                        book.pin(key)
                        book.policy.observeNextUse(key, at: nextUse)
                        book.use(key)
                    } else {
                        misses.append((key, nextUse))
                    }
                }
                for (key, nextUse) in misses {
                    guard case .reserved = book.reserve(key, bytes: 1, pins: 1) else {
                        throw TraceError("replay: no room for \(key) — floors of \(floorSlots) leave too little of the pool")
                    }
                    book.policy.observeNextUse(key, at: nextUse)
                    book.loaded(key)
                    book.use(key)
                }
                for key in group { book.unpin(key) }
                book.policy.sequence(token.seq, routedTo: group.map(\.expert), layer: layer)
            }
        }
        let totalHits = hits.reduce(0, +), totalRequests = requests.reduce(0, +)
        return Result(
            hitRate: totalRequests > 0 ? Double(totalHits) / Double(totalRequests) : 0,
            perLayer: zip(hits, requests).map { $1 > 0 ? Double($0) / Double($1) : nil },
            hits: totalHits, requests: totalRequests, pool: pool)
    }

    /// The experts of a routing list without repeats, first occurrence kept.
    static func distinct(_ experts: [Int]) -> [Int] {
        var seen: Set<Int> = []
        return experts.filter { seen.insert($0).inserted }
    }

    /// For every request in replay order, the time of the next request of the same expert
    /// (`Int.max` if none). Time is `token × layers + layer`, one order for both pool kinds.
    static func nextUseTimes(_ trace: RoutingTrace) -> [Int] {
        let layerCount = max(trace.layerCount, 1)
        var keys: [ExpertKey] = []
        var times: [Int] = []
        for (index, token) in trace.tokens.enumerated() {
            for (layer, routed) in token.layers.enumerated() {
                guard let routed else { continue }
                for expert in distinct(routed) {
                    keys.append(ExpertKey(layer: layer, expert: expert))
                    times.append(index * layerCount + layer)
                }
            }
        }
        var next = [Int](repeating: Int.max, count: keys.count)
        var upcoming: [ExpertKey: Int] = [:]
        for i in stride(from: keys.count - 1, through: 0, by: -1) {
            next[i] = upcoming[keys[i]] ?? Int.max
            upcoming[keys[i]] = times[i]
        }
        return next
    }
}
