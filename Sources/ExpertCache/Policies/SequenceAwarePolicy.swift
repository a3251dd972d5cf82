import Foundation

/// A policy that knows which sequences are running: it evicts the expert least likely to be
/// used next, estimated from what the running sequences themselves have routed to so far,
/// shrunk towards the layer's long-run popularity while a sequence's own evidence is thin, plus
/// a short recency bonus for the temporal locality of consecutive tokens:
///
///     p(e) = (local(e) + priorWeight · share(e)) / (localTotal + priorWeight)
///            + recencyWeight · 2^(−age(e) / recencyHalfLife)
///
/// `local(e)` counts the references of the running sequences' tokens to `e` (reported through
/// `sequence(_:routedTo:layer:)`, removed when a sequence ends), `share(e)` is `e`'s share of
/// its layer's references (decayed with `longHalfLife`), and `age(e)` counts the layer's
/// references since `e` was last used or inserted. All times are counted in references to the
/// expert's own layer, as `LRFUPolicy` counts them.
///
/// Why the sequences: what a sequence routed to in its first tokens predicts its later tokens
/// better than any count over all sequences (a prompt about one subject keeps using the
/// experts that subject favours). On the trained demo's held-out Python trace, knowing where
/// each sequence starts and ends is what lifts an estimator like this from 34% to 56% of the
/// LRU→Belady gap at 16 of 32 experts cached (docs/expert-cache.md, "A policy that knows the
/// sequences"). Without sequence reports (a caller that never calls the hooks) it is a
/// frequency policy with a recency bonus.
///
/// The recency bonus can be learned (`Parameters.learnsRecency`, opt-in): once the sequences
/// report their tokens, the fixed term above gives way to a `RecencyCalibration` measured on
/// the stream itself, and the score becomes the per-token chance
///
///     P(e) = min(1, k · p(e)) + bonus(age in tokens, class of k · p(e))
///
/// divided by `k` (the layer's references per token) so that it stays in the units of `p`.
/// Why: how much a recent use predicts the next differs by model — the synthetic trace's decode
/// tokens repeat the previous token's experts a third of the time, the trained demo's favour
/// the last dozen tokens — and in one pool shared by all layers a fixed bonus either evicts the
/// experts a token just used (then misses them on the next token) or over-protects them. On
/// the synthetic trace's shared pool this lifts the LRU→Belady gap closed from 25-29% to
/// 35-47%; live on the widened demo it hits 0.5-3 points less, as the replay of the same live
/// routing predicts (docs/expert-cache.md, "A recency bonus that is measured", "The live routing
/// replayed"). So the runtime's default runs both, each on a simulated cache, and evicts as the
/// one hitting more (`DuelingPolicy`, `PolicyChoice.sequence`).
///
/// Pure state, no I/O; the defaults were tuned in trace replay for top-4 routing (a
/// per-token weight of 32 tokens ≈ 128 references, a recency half-life of 16 tokens).
public struct SequenceAwarePolicy: CachePolicy {
    public let name: String

    /// Tunables, in references to a layer.
    public struct Parameters: Sendable, Equatable {
        /// How many references of long-run popularity a sequence's own evidence is shrunk towards.
        public var priorWeight = 128.0
        /// The recency bonus of an expert used (or inserted) just now.
        public var recencyWeight = 0.025
        /// References after which the recency bonus halves.
        public var recencyHalfLife = 64.0
        /// References after which the long-run counts halve (so popularity follows drifting routing).
        public var longHalfLife = 4096.0
        /// Learn the recency bonus from the stream (`RecencyCalibration`) once sequences report
        /// their tokens; false keeps the fixed bonus above. It wins in trace replay on the
        /// synthetic trace but lowered the hit rate live on the widened demo (docs/expert-cache.md,
        /// "A recency bonus that is measured"), so the runtime duels the two (`DuelingPolicy`).
        public var learnsRecency = false
        /// Evict the expert whose next use is expected last, from its chance of use per token
        /// and how many layers run before its own does again (below, `victim`); false ranks by
        /// the chance alone (`MOE_LAYER_DISTANCE=off`, at run time and in `bench trace`). It hits
        /// more in every replay and read fewer bytes per token live in 30 of 32 paired runs at 1,
        /// 8 and 32 sequences with the disk throttled to a steady rate (docs/expert-cache.md,
        /// "The layer that just ran waits longest").
        public var layerDistance = true
        /// With `layerDistance`, count the chance of use per step of the running sequences,
        /// `1 − (1 − P)^S` for `S` of them, not per token: a step of 64 sequences runs nearly
        /// every expert of a layer, so the layer distance decides and the running layer's
        /// finished experts go first (`MOE_STEP_CHANCE=off` counts per token, an A/B switch).
        public var perStepChance = true
        public init() {}

        /// What the runtime runs and `bench trace` replays: the defaults, ranking by the chance
        /// alone under `MOE_LAYER_DISTANCE=off` (an A/B switch), so that replay and runtime agree.
        public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> Parameters {
            var parameters = Parameters()
            parameters.layerDistance = environment["MOE_LAYER_DISTANCE"] != "off"
            parameters.perStepChance = environment["MOE_STEP_CHANCE"] != "off"
            return parameters
        }
    }

    /// Uses between refreshes of the recency table (at least; as many as the experts the policy
    /// knows, so that a refresh costs at most one estimate per use), and the half-life of its
    /// evidence in uses, so that it follows a workload that drifts.
    static let calibrationInterval = 256
    static let calibrationHalfLife = 8192.0

    public let parameters: Parameters
    /// Per layer: its reference clock and the decayed total of its references.
    private var layers: [Int: LayerState] = [:]
    /// Per expert: decayed long-run count and when it was last used or inserted.
    private var experts: [ExpertKey: ExpertState] = [:]
    /// The running sequences' references per expert, summed, and per sequence (to take back when
    /// it ends).
    private var local: [ExpertKey: Int] = [:]
    private var localTotal: [Int: Int] = [:]
    private var bySequence: [Int: [ExpertKey: Int]] = [:]
    /// The measured recency bonus, and the uses since it was last refreshed.
    private var calibration = RecencyCalibration()
    private var usesSinceRefresh = 0
    private var calibrated = false
    /// The layer whose routing was reported last: with the runtime's order its uses (and the
    /// evictions its misses cause) are the ones running now.
    private var reportingLayer: Int?
    /// Whether a step's reports come before its uses (the runtime: the router reports as it
    /// routes) or after them (trace replay), learned from the first report or use. Not per layer:
    /// in the runtime a layer's resident experts are used before that layer's report (below).
    private var reportsLead: Bool?
    /// The layer used last (the one running now), each known layer's place in the order the
    /// layers run (by index), and the experts a token is routed to (from the sequence reports).
    private var lastUsedLayer: Int?
    private var layerPlaces: [Int: Int] = [:]
    private var expertsPerToken: Int?

    struct LayerState: Sendable {
        var clock = 0
        /// Decayed count of all references, as of `clock`.
        var total = 0.0
        /// Tokens (rows) of this layer the sequences reported, and their references.
        var tokens = 0
        var tokenReferences = 0
        /// References per token, once tokens were reported.
        var referencesPerToken: Double? { tokens > 0 ? Double(tokenReferences) / Double(tokens) : nil }
        /// The first token of the step reported last, and whether the last event was a report
        /// (a step's reports of a layer come together, then its uses).
        var stepStart = 0
        var lastEventWasReport = false
        /// The token the uses now belong to: the first row of their step, as in the replay,
        /// where a step's uses come before its rows are counted. So both orders give the same
        /// ages, in steps of one row or of many.
        func tokenInProgress(reportsLead: Bool) -> Int { reportsLead ? stepStart : tokens }
    }

    struct ExpertState: Sendable {
        /// Decayed count of references, as of `countedAt`.
        var count = 0.0
        var countedAt = 0
        /// Layer clock at the last use or insertion.
        var touched = 0
        /// The layer's token at the last use (nil: never used), and at the last use or insertion.
        var usedAtToken: Int?
        var touchedAtToken = 0
        /// Inserted (a prefetch) and not used since.
        var insertedUnused = false
    }

    public init(parameters: Parameters = Parameters(), name: String = "sequence") {
        precondition(parameters.priorWeight > 0 && parameters.recencyWeight >= 0
                     && parameters.recencyHalfLife > 0 && parameters.longHalfLife > 0)
        self.parameters = parameters
        self.name = name
    }

    /// An insertion is not a use (a prefetch may never be used); it only restarts the expert's
    /// age, so what was just read gets the recency bonus.
    public mutating func didInsert(_ key: ExpertKey) {
        let layer = layers[key.layer, default: LayerState()]
        var state = experts[key, default: ExpertState()]
        state.touched = layer.clock
        state.touchedAtToken = layer.tokenInProgress(reportsLead: reportsLead == true)
        state.insertedUnused = true
        experts[key] = state
    }

    public mutating func didAccess(_ key: ExpertKey) {
        if parameters.layerDistance {
            if layerPlaces[key.layer] == nil {
                let order = (Array(layerPlaces.keys) + [key.layer]).sorted()
                layerPlaces = Dictionary(uniqueKeysWithValues: order.enumerated().map { ($1, $0) })
            }
            lastUsedLayer = key.layer
        }
        var layer = layers[key.layer, default: LayerState()]
        if reportsLead == nil { reportsLead = false }
        // In the runtime's order, a use of a layer other than the one reported last comes before
        // that layer's report: `OffloadingExpertCache.withExperts` uses the step's resident
        // experts (its hits) as it pins them, and the layer's routing is reported from the
        // `pinned` callback after that (its misses are used after the report, as they arrive).
        // The step does not use them again, so this is the coming step's use: stamped at its
        // first row, as the replay stamps a use that precedes its step's report.
        let ahead = reportsLead == true && key.layer != reportingLayer
        if !ahead { layer.lastEventWasReport = false }
        let token = ahead ? layer.tokens : layer.tokenInProgress(reportsLead: reportsLead == true)
        if parameters.learnsRecency, let perToken = layer.referencesPerToken,
           let used = experts[key]?.usedAtToken, used < token {
            // The run of tokens since its last use ends in a use: evidence, at the estimate before this use counts.
            calibration.recordUse(age: token - used, estimate: min(1, perToken * estimate(key)))
        }
        layer.clock += 1
        layer.total = 1 + layer.total * decay(1)
        layers[key.layer] = layer
        var state = experts[key, default: ExpertState()]
        state.count = 1 + state.count * decay(layer.clock - state.countedAt)
        state.countedAt = layer.clock
        state.touched = layer.clock
        state.usedAtToken = token
        state.touchedAtToken = token
        state.insertedUnused = false
        experts[key] = state
        if parameters.learnsRecency {
            usesSinceRefresh += 1
            if usesSinceRefresh >= max(Self.calibrationInterval, experts.count) { refreshCalibration() }
        }
    }

    public mutating func didEvict(_ key: ExpertKey) {}

    public mutating func sequence(_ sequence: Int, routedTo routed: [Int], layer: Int) {
        guard !routed.isEmpty else { return }
        for expert in routed {
            let key = ExpertKey(layer: layer, expert: expert)
            // In place: copying the sequence's table out and back cost a copy of it per row and layer.
            bySequence[sequence, default: [:]][key, default: 0] += 1
            local[key, default: 0] += 1
        }
        localTotal[layer, default: 0] += routed.count
        expertsPerToken = routed.count
        // Token counts only feed the measured recency bonus: the default pays nothing more per row.
        guard parameters.learnsRecency else { return }
        var state = layers[layer, default: LayerState()]
        if reportsLead == nil { reportsLead = true }
        reportingLayer = layer
        if !state.lastEventWasReport { state.stepStart = state.tokens }
        state.lastEventWasReport = true
        state.tokens += 1
        state.tokenReferences += routed.count
        layers[layer] = state
    }

    public mutating func sequenceEnded(_ sequence: Int) {
        guard let counts = bySequence.removeValue(forKey: sequence) else { return }
        for (key, count) in counts {
            let left = local[key]! - count
            local[key] = left > 0 ? left : nil
            let total = localTotal[key.layer]! - count
            localTotal[key.layer] = total > 0 ? total : nil
        }
    }

    /// Sequences with references counted now.
    public var runningSequences: Int { bySequence.count }

    /// References of the running sequences' tokens to `layer`'s experts counted now.
    public func sequenceReferences(layer: Int) -> Int { localTotal[layer] ?? 0 }

    /// With `layerDistance`, the candidate whose next use is expected last: with a chance `P` of
    /// being used at each run of its layer (the score per token, `k · score` for `k` experts per
    /// token), and `d` layers to run before its own runs again (1 for the layer after the one
    /// running now, the layer count for the running one's),
    ///
    ///     E[time to next use] ≈ d + layers · (1/P − 1)     (in layer runs)
    ///
    /// Why: in one pool shared by all layers an expert of the layer that just ran waits a whole
    /// token for its next chance, one of the next layer only a moment; ranking by the chance alone
    /// treats them alike. In replay as recorded this closes 1-4 more points of the LRU→Belady gap
    /// on every trace, and 4-5 on live 8- and 32-sequence routing (docs/expert-cache.md). In the
    /// runtime the running layer's experts are released one by one and become candidates at once
    /// (the replay pins a step's experts): this ranks them first.
    public func victim(among candidates: [ExpertKey]) -> ExpertKey {
        // The running layer's place, when the ranking is by the expected wait. A local function,
        // not a stored closure: this runs for every eviction and should not allocate.
        let distance: (here: Int, layers: Int, perToken: Double)? =
            parameters.layerDistance && layerPlaces.count > 1
            ? lastUsedLayer.map { (layerPlaces[$0] ?? 0, layerPlaces.count, Double(expertsPerToken ?? 1)) } : nil
        // How much a candidate is worth keeping: its score, or minus its expected wait.
        let sequences = parameters.perStepChance ? Double(max(1, bySequence.count)) : 1
        func worth(_ key: ExpertKey) -> Double {
            guard let distance else { return score(key) }
            // Not capped at 1: within one layer the order stays the score's.
            let perToken = max(1e-9, distance.perToken * score(key))
            let chance = sequences == 1 || perToken >= 1 ? perToken : -expm1(sequences * log1p(-perToken))
            let ahead = ((layerPlaces[key.layer] ?? distance.here) - distance.here + distance.layers) % distance.layers
            return -(Double(ahead == 0 ? distance.layers : ahead) + Double(distance.layers) * (1 / chance - 1))
        }
        var best = candidates[0], bestWorth = worth(best)
        for key in candidates.dropFirst() {
            let value = worth(key)
            if value < bestWorth || (value == bestWorth && key < best) { (best, bestWorth) = (key, value) }
        }
        return best
    }

    /// The estimated chance that `key` is used next (larger: more worth keeping), per reference
    /// to its layer.
    public func score(_ key: ExpertKey) -> Double {
        let layer = layers[key.layer] ?? LayerState()
        let state = experts[key] ?? ExpertState()
        let estimate = estimate(key, layer: layer, state: state)
        // A prefetch not used yet keeps the fixed bonus: the table measures reuse, not a prediction's worth.
        if calibrated, !state.insertedUnused, let perToken = layer.referencesPerToken {
            let age = resolvedTokens(layer: key.layer, layer) - state.touchedAtToken
            // Age 0: the step in progress used it. The runtime releases a step's experts one by
            // one, so a later miss of the same step can reach it (the replay holds the step
            // pinned): read it at the age the next step will find it. Protecting it outright
            // (score ∞) cut the 8-sequence hit rate to 0.27-0.30 live.
            let perTokenChance = min(1, perToken * estimate)
            return (perTokenChance + calibration.bonus(age: age > 0 ? age : layer.tokens - state.touchedAtToken, estimate: perTokenChance)) / perToken
        }
        let age = Double(layer.clock - state.touched)
        return estimate + parameters.recencyWeight * exp2(-age / parameters.recencyHalfLife)
    }

    /// `p(e)`: the running sequences' share of references to `key`, shrunk towards its
    /// long-run share of its layer's references.
    func estimate(_ key: ExpertKey) -> Double {
        estimate(key, layer: layers[key.layer] ?? LayerState(), state: experts[key] ?? ExpertState())
    }

    private func estimate(_ key: ExpertKey, layer: LayerState, state: ExpertState) -> Double {
        let share = layer.total > 0 ? state.count * decay(layer.clock - state.countedAt) / layer.total : 0
        return (Double(local[key] ?? 0) + parameters.priorWeight * share)
            / (Double(localTotal[key.layer] ?? 0) + parameters.priorWeight)
    }

    /// Recomputes the recency table with the experts not used since (their runs are still
    /// open: the tokens after the use that have passed, `resolvedTokens − used − 1`, were
    /// exposures).
    /// Every expert the policy knows is visited, at most one per use since the last refresh.
    private mutating func refreshCalibration() {
        let uses = usesSinceRefresh
        usesSinceRefresh = 0
        var open: [(age: Int, estimate: Double)] = []
        open.reserveCapacity(experts.count)
        for (key, state) in experts {
            guard let used = state.usedAtToken, let layer = layers[key.layer], let perToken = layer.referencesPerToken else { continue }
            open.append((resolvedTokens(layer: key.layer, layer) - used, min(1, perToken * estimate(key, layer: layer, state: state))))
        }
        guard !open.isEmpty else { return }
        calibration.refresh(open: open, decay: exp2(-Double(uses) / Self.calibrationHalfLife))
        calibrated = true
    }

    /// The first token of `layer` whose uses may still come: ages are counted up to here. The
    /// replay reports a step after its uses, so that is `tokens`; the runtime reports first, so
    /// while the reported layer's uses run its step is still open (from `stepStart`), and every
    /// other layer's is done (a layer's uses end before the next layer reports).
    private func resolvedTokens(layer index: Int, _ layer: LayerState) -> Int {
        reportsLead == true && index == reportingLayer ? layer.stepStart : layer.tokens
    }

    private func decay(_ references: Int) -> Double {
        references == 0 ? 1 : exp2(-Double(references) / parameters.longHalfLife)
    }
}
