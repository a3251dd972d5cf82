import MoEModels

/// A perfect predictor, for measuring how much prefetch *could* gain: it replays the routing a
/// previous run of the same greedy generation recorded (`generate --record-trace`) and, while
/// MoE layer l of decode step t routes, prefetches the experts that the layer `depth` MoE
/// layers later will really use (wrapping into step t + 1's first layers).
///
/// It is a benchmark instrument, not a predictor to serve with: only a replay of the same
/// prompt, model and greedy decoding matches the trace. What it answers is whether the disk
/// and the lead time leave anything for a better predictor to win: if prefetching the right
/// experts `depth` layers ahead does not make decoding faster, no predictor can.
public final class OraclePrefetcher: RoutingObserver {
    /// Per decode step, per model layer: the experts that step used there (nil for dense layers).
    private let decodeRouting: [[[Int]?]]
    private let moeLayers: [Int]
    private let depth: Int
    private let provider: ExpertProvider
    /// Chained observer called after this one.
    public var next: RoutingObserver?
    /// Decode steps seen so far (single-row steps; prefill chunks are not replayed).
    public private(set) var decodeSteps = 0
    /// Prefetch hints issued.
    public private(set) var hintsIssued = 0

    /// Replays `decodeRouting` (decode steps in order, each indexed by model layer) `depth` MoE
    /// layers ahead (≥ 1) into `provider`.
    public init(decodeRouting: [[[Int]?]], moeLayers: [Int], depth: Int, provider: ExpertProvider) {
        precondition(depth >= 1, "the oracle looks at least one layer ahead")
        self.decodeRouting = decodeRouting
        self.moeLayers = moeLayers
        self.depth = depth
        self.provider = provider
    }

    public func willRunAttention(layer: Int, input: UnsafePointer<Float>, rowCount: Int) {
        next?.willRunAttention(layer: layer, input: input, rowCount: rowCount)
    }

    public func willRunStep(lastRows: [Int]) { next?.willRunStep(lastRows: lastRows) }
    public func didRunStep() { next?.didRunStep() }
    public func willRunSequences(_ sequences: [SequenceRows]) { next?.willRunSequences(sequences) }
    public func sequenceEnded(_ id: Int) { next?.sequenceEnded(id) }
    public func didShadowRoute(layer: Int, routes: [TokenRouting]) { next?.didShadowRoute(layer: layer, routes: routes) }
    public func didShadowGuess(layer: Int, experts: [Int]) { next?.didShadowGuess(layer: layer, experts: experts) }

    public func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) {
        defer { next?.didRoute(layer: layer, routes: routes, gateInput: gateInput, rowCount: rowCount) }
        guard rowCount == 1, let position = moeLayers.firstIndex(of: layer) else { return }
        if position == 0 { decodeSteps += 1 }
        // Flattened (step, MoE layer) index of the layer `depth` ahead.
        let target = (decodeSteps - 1) * moeLayers.count + position + depth
        let step = target / moeLayers.count, targetLayer = moeLayers[target % moeLayers.count]
        guard step < decodeRouting.count, targetLayer < decodeRouting[step].count,
              let experts = decodeRouting[step][targetLayer], !experts.isEmpty else { return }
        provider.prefetch(layer: targetLayer, experts: experts, pipeline: false)
        hintsIssued += 1
    }
}
