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
        public init() {}
    }

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

    struct LayerState: Sendable {
        var clock = 0
        /// Decayed count of all references, as of `clock`.
        var total = 0.0
    }

    struct ExpertState: Sendable {
        /// Decayed count of references, as of `countedAt`.
        var count = 0.0
        var countedAt = 0
        /// Layer clock at the last use or insertion.
        var touched = 0
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
        experts[key, default: ExpertState()].touched = layers[key.layer, default: LayerState()].clock
    }

    public mutating func didAccess(_ key: ExpertKey) {
        var layer = layers[key.layer, default: LayerState()]
        layer.clock += 1
        layer.total = 1 + layer.total * decay(1)
        layers[key.layer] = layer
        var state = experts[key, default: ExpertState()]
        state.count = 1 + state.count * decay(layer.clock - state.countedAt)
        state.countedAt = layer.clock
        state.touched = layer.clock
        experts[key] = state
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

    public func victim(among candidates: [ExpertKey]) -> ExpertKey {
        var best = candidates[0], bestScore = score(best)
        for key in candidates.dropFirst() {
            let value = score(key)
            if value < bestScore || (value == bestScore && key < best) { (best, bestScore) = (key, value) }
        }
        return best
    }

    /// The estimated chance that `key` is used next (larger: more worth keeping).
    public func score(_ key: ExpertKey) -> Double {
        let layer = layers[key.layer] ?? LayerState()
        let state = experts[key] ?? ExpertState()
        let share = layer.total > 0 ? state.count * decay(layer.clock - state.countedAt) / layer.total : 0
        let estimate = (Double(local[key] ?? 0) + parameters.priorWeight * share)
            / (Double(localTotal[key.layer] ?? 0) + parameters.priorWeight)
        let age = Double(layer.clock - state.touched)
        return estimate + parameters.recencyWeight * exp2(-age / parameters.recencyHalfLife)
    }

    private func decay(_ references: Int) -> Double {
        references == 0 ? 1 : exp2(-Double(references) / parameters.longHalfLife)
    }
}
