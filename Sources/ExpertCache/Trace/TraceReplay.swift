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
        let topK = trace.maxExpertsPerToken
        guard cachePerLayer >= topK else {
            throw TraceError("a cache of \(cachePerLayer) experts per layer cannot hold the \(topK) experts one token uses in one layer")
        }
        let lastTokenOfSequence = Dictionary(trace.tokens.enumerated().map { ($1.seq, $0) }, uniquingKeysWith: max)
        return try replay(steps: trace.tokens.map { [$0] }, layerCount: trace.layerCount, recordedLayers: trace.recordedLayers.count,
                          policy: policy, cachePerLayer: cachePerLayer, pool: pool, floorSlots: floorSlots,
                          endsSequence: { step, token in lastTokenOfSequence[token.seq] == step })
    }

    /// Replays `steps` (each the tokens of the sequences that run together, one token each) as a
    /// batching engine requests them: per step and layer, the union of the tokens' experts at
    /// once; the policy then hears each token's routing as its sequence's. `endsSequence(step,
    /// token)` says that the token is its sequence's last.
    static func replay(steps: [[TraceToken]], layerCount: Int, recordedLayers recorded: Int, policy: any CachePolicy,
                       cachePerLayer: Int, pool: Pool, floorSlots: Int,
                       endsSequence: (Int, TraceToken) -> Bool = { _, _ in false }) throws -> Result {
        try replayCountingWindow(steps: steps, layerCount: layerCount, recordedLayers: recorded, policy: policy,
                                 cachePerLayer: cachePerLayer, pool: pool, floorSlots: floorSlots, windowStart: steps.count,
                                 endsSequence: endsSequence).all
    }

    /// `replay`, counting hits over every step and, in the same pass, over the steps from
    /// `windowStart` on.
    static func replayCountingWindow(steps: [[TraceToken]], layerCount: Int, recordedLayers recorded: Int, policy: any CachePolicy,
                                     cachePerLayer: Int, pool: Pool, floorSlots: Int, windowStart: Int,
                                     endsSequence: (Int, TraceToken) -> Bool) throws -> (all: Result, window: Result) {
        var book: CacheBookkeeping
        switch pool {
        case .perLayer:
            book = CacheBookkeeping(budgetBytes: Int.max, layerBudgetBytes: cachePerLayer, policy: policy)
        case .global:
            book = CacheBookkeeping(budgetBytes: cachePerLayer * recorded, floorSlots: floorSlots, policy: policy)
        }
        let nextUses = nextUseTimes(steps: steps, layerCount: layerCount)
        var requestIndex = 0
        var hits = [Int](repeating: 0, count: layerCount)
        var requests = [Int](repeating: 0, count: layerCount)
        var windowHits = hits, windowRequests = requests
        for (stepIndex, step) in steps.enumerated() {
            let inWindow = stepIndex >= windowStart
            defer {
                for token in step where endsSequence(stepIndex, token) { book.policy.sequenceEnded(token.seq) }
            }
            for layer in 0..<layerCount {
                guard let union = stepUnion(step, layer: layer) else { continue }
                let group = union.map { ExpertKey(layer: layer, expert: $0) }
                var misses: [(ExpertKey, Int)] = []
                // Residents first: they are pinned before any miss can evict them.
                for key in group {
                    let nextUse = nextUses[requestIndex]
                    requestIndex += 1
                    requests[layer] += 1
                    if inWindow { windowRequests[layer] += 1 }
                    if book.entry(key) != nil {
                        hits[layer] += 1
                        if inWindow { windowHits[layer] += 1 }
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
                for token in step {
                    guard layer < token.layers.count, let routed = token.layers[layer] else { continue }
                    book.policy.sequence(token.seq, routedTo: step.count == 1 ? union : distinct(routed), layer: layer)
                }
            }
        }
        func result(_ hits: [Int], _ requests: [Int]) -> Result {
            let totalHits = hits.reduce(0, +), totalRequests = requests.reduce(0, +)
            return Result(
                hitRate: totalRequests > 0 ? Double(totalHits) / Double(totalRequests) : 0,
                perLayer: zip(hits, requests).map { $1 > 0 ? Double($0) / Double($1) : nil },
                hits: totalHits, requests: totalRequests, pool: pool)
        }
        return (result(hits, requests), result(windowHits, windowRequests))
    }

    /// `count` sequences of `trace` decoding together, step by step, as a batching server runs
    /// them: each step holds one token of each. Lane i replays the decode tokens of the trace's
    /// sequence i mod S (S sequences, in the order they first appear; a sequence without decode
    /// tokens contributes all of its tokens); when there are more lanes than sequences, the
    /// copies of a sequence start at evenly spaced positions of it and wrap round, so that no two
    /// lanes route alike. Lane i is sequence i to the policy. As many steps as the shortest
    /// sequence has tokens. One sequence is what one user costs: every sequence's decode
    /// tokens, one sequence after another, a token a step.
    public static func batchedSteps(_ trace: RoutingTrace, sequences count: Int) throws -> [[TraceToken]] {
        guard count >= 1 else { throw TraceError("the batch needs at least one sequence") }
        var order: [Int] = []
        var bySequence: [Int: [TraceToken]] = [:]
        for token in trace.tokens {
            if bySequence[token.seq] == nil { order.append(token.seq) }
            bySequence[token.seq, default: []].append(token)
        }
        let sources = order.map { seq -> [TraceToken] in
            let tokens = bySequence[seq]!
            let decode = tokens.filter { $0.phase == "decode" }
            return decode.isEmpty ? tokens : decode
        }
        guard let steps = sources.map(\.count).min(), steps > 0 else { throw TraceError("the trace has no tokens") }
        if count == 1 { return sources.joined().map { [$0] } }
        let copies = (count + sources.count - 1) / sources.count
        return (0..<steps).map { step in
            (0..<count).map { lane in
                let source = sources[lane % sources.count]
                let start = (lane / sources.count) * source.count / copies
                var token = source[(start + step) % source.count]
                token.seq = lane
                token.pos = step
                return token
            }
        }
    }

    /// What a batched replay (`runBatched`) found.
    public struct BatchResult: Codable, Sendable, Equatable {
        /// Sequences decoding together.
        public var sequences: Int
        /// Steps replayed (tokens per sequence).
        public var steps: Int
        /// Expert requests (the distinct experts of each step and layer) and those that hit.
        public var requests: Int
        public var hits: Int
        /// hits / requests.
        public var hitRate: Double
        /// Distinct experts a step requests per recorded layer, on average.
        public var unionPerLayer: Double
        /// Experts read per token: (requests − hits) / (steps × sequences). Reads are what bounds
        /// decode on a disk, so a batch's speed-up over one sequence is at most the ratio of this.
        public var missesPerToken: Double

        enum CodingKeys: String, CodingKey {
            case sequences, steps, requests, hits, hitRate = "hit_rate", unionPerLayer = "union_per_layer", missesPerToken = "misses_per_token"
        }
    }

    /// Replays `sequences` of `trace`'s sequences decoding together (`batchedSteps`) through
    /// `policy` in one pool of `cachePerLayer × recorded layers` slots shared by all layers, with
    /// floors of `floorSlots` (a layer's union cannot fit a per-layer cache).
    public static func runBatched(_ trace: RoutingTrace, sequences: Int, policy: any CachePolicy, cachePerLayer: Int,
                                  floorSlots: Int = 0) throws -> BatchResult {
        let steps = try batchedSteps(trace, sequences: sequences)
        let recorded = trace.recordedLayers.count
        try checkSharedPoolHolds(steps, layerCount: trace.layerCount, recordedLayers: recorded, cachePerLayer: cachePerLayer,
                                 floorSlots: floorSlots, what: "\(sequences) sequences use")
        let lastStep = Dictionary(steps.enumerated().flatMap { index, step in step.map { ($0.seq, index) } }, uniquingKeysWith: max)
        let result = try replay(steps: steps, layerCount: trace.layerCount, recordedLayers: recorded, policy: policy,
                                cachePerLayer: cachePerLayer, pool: .global, floorSlots: floorSlots,
                                endsSequence: { index, token in lastStep[token.seq] == index })
        let tokens = steps.count * sequences
        return BatchResult(sequences: sequences, steps: steps.count, requests: result.requests, hits: result.hits, hitRate: result.hitRate,
                           unionPerLayer: Double(result.requests) / Double(max(steps.count * recorded, 1)),
                           missesPerToken: Double(result.requests - result.hits) / Double(max(tokens, 1)))
    }

    /// A trace's steps as the engine ran them. With `TraceToken.step` (which `TraceRecorder`
    /// writes), consecutive tokens of the same step form one step, prefill rows and all. A trace
    /// without steps (older single-sequence recordings) is read as one sequence at a time, the
    /// way `generate` runs it: a prompt's consecutive prefill tokens are one step, every other
    /// token a step of its own. Throws when only some tokens have a step.
    public static func recordedSteps(_ trace: RoutingTrace) throws -> [[TraceToken]] {
        let withSteps = trace.tokens.filter { $0.step != nil }.count
        guard withSteps == 0 || withSteps == trace.tokens.count else {
            throw TraceError("\(withSteps) of the trace's \(trace.tokens.count) tokens have a \"step\": a trace is replayed as recorded either with every token's step or with none")
        }
        var steps: [[TraceToken]] = []
        var current: Int?
        for token in trace.tokens {
            let continues: Bool
            if withSteps > 0 {
                continues = token.step == current
                current = token.step
            } else if let last = steps.last?.last {
                continues = token.phase == "prefill" && last.phase == "prefill" && last.seq == token.seq && last.pos + 1 == token.pos
            } else {
                continues = false
            }
            if continues { steps[steps.count - 1].append(token) } else { steps.append([token]) }
        }
        return steps
    }

    /// What a replay of the recorded steps found, over the whole trace and over its decode window.
    public struct RecordedResult: Codable, Sendable, Equatable {
        /// Every step, prefill included.
        public var all: Result
        /// The steps after the last one holding a prefill row (what `bench batch` times and
        /// counts); equal to `all` when the trace has no prefill.
        public var decodeWindow: Result
        /// The first step of the decode window.
        public var decodeWindowStart: Int

        enum CodingKeys: String, CodingKey { case all, decodeWindow = "decode_window", decodeWindowStart = "decode_window_start" }
    }

    /// Replays the trace's recorded steps (`recordedSteps`) through `policy` in one pool of
    /// `cachePerLayer × recorded layers` slots shared by all layers, with floors of
    /// `floorSlots`: the runtime's cache as a batching engine fed it.
    public static func runRecorded(_ trace: RoutingTrace, policy: any CachePolicy, cachePerLayer: Int,
                                   floorSlots: Int = 0) throws -> RecordedResult {
        let steps = try recordedSteps(trace)
        let recorded = trace.recordedLayers.count
        try checkSharedPoolHolds(steps, layerCount: trace.layerCount, recordedLayers: recorded, cachePerLayer: cachePerLayer,
                                 floorSlots: floorSlots, what: "the recorded steps use")
        let lastStep = Dictionary(steps.enumerated().flatMap { index, step in step.map { ($0.seq, index) } }, uniquingKeysWith: max)
        let lastPrefill = steps.lastIndex { step in step.contains { $0.phase == "prefill" } }
        let windowStart = lastPrefill.map { $0 + 1 } ?? 0
        let (all, window) = try replayCountingWindow(steps: steps, layerCount: trace.layerCount, recordedLayers: recorded, policy: policy,
                                                     cachePerLayer: cachePerLayer, pool: .global, floorSlots: floorSlots,
                                                     windowStart: windowStart, endsSequence: { index, token in lastStep[token.seq] == index })
        return RecordedResult(all: all, decodeWindow: window, decodeWindowStart: windowStart)
    }

    /// Throws unless one pool of `cachePerLayer × recorded layers` slots, the other layers'
    /// floors set aside, holds the widest union a step of `steps` requests in one layer.
    static func checkSharedPoolHolds(_ steps: [[TraceToken]], layerCount: Int, recordedLayers recorded: Int, cachePerLayer: Int,
                                     floorSlots: Int, what: String) throws {
        let widest = steps.flatMap { step in (0..<layerCount).map { stepUnion(step, layer: $0)?.count ?? 0 } }.max() ?? 0
        let room = cachePerLayer * recorded - floorSlots * max(recorded - 1, 0)
        guard widest <= room else {
            throw TraceError("\(what) up to \(widest) experts of one layer in one step; a shared pool of \(cachePerLayer) per layer with floors of \(floorSlots) has room for \(room)")
        }
    }

    /// The experts of a routing list without repeats, first occurrence kept.
    static func distinct(_ experts: [Int]) -> [Int] {
        var seen: Set<Int> = []
        return experts.filter { seen.insert($0).inserted }
    }

    /// The distinct experts `step`'s tokens use in `layer`, in token order; nil when none of
    /// them was recorded there.
    static func stepUnion(_ step: [TraceToken], layer: Int) -> [Int]? {
        if step.count == 1 {
            guard layer < step[0].layers.count, let routed = step[0].layers[layer] else { return nil }
            return distinct(routed)
        }
        var union: [Int]? = nil
        for token in step where layer < token.layers.count {
            if let routed = token.layers[layer] { union = (union ?? []) + routed }
        }
        return union.map(distinct)
    }

    /// For every request in replay order, the time of the next request of the same expert
    /// (`Int.max` if none). Time is `step × layers + layer`, one order for both pool kinds.
    static func nextUseTimes(steps: [[TraceToken]], layerCount: Int) -> [Int] {
        let layerCount = max(layerCount, 1)
        var keys: [ExpertKey] = []
        var times: [Int] = []
        for (index, step) in steps.enumerated() {
            for layer in 0..<layerCount {
                guard let union = stepUnion(step, layer: layer) else { continue }
                for expert in union {
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
