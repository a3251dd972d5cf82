import ModelFormats
import TensorMath

/// The routing decision for one token in one MoE layer.
public struct TokenRouting: Sendable, Equatable {
    /// Chosen experts, highest router probability first.
    public var experts: [Int]
    /// Their mixing weights (renormalised when the architecture says so).
    public var weights: [Float]
}

/// Receives every MoE layer's routing decisions as they are made (trace recording, predictor
/// statistics). Called on the engine thread; keep it cheap.
public protocol RoutingObserver: AnyObject {
    /// `routes[row]` for each of the step's token rows in MoE layer `layer`; `gateInput` is the
    /// normalised hidden state the router saw, `[rows, hidden]`. Called before any expert of
    /// the layer runs, so loads started here overlap the layer's expert compute.
    func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int)

    /// Layer `layer` is about to run attention on `input`, the normalised hidden state
    /// `[rows, hidden]`. Loads started here overlap the attention.
    func willRunAttention(layer: Int, input: UnsafePointer<Float>, rowCount: Int)
}

extension RoutingObserver {
    public func willRunAttention(layer: Int, input: UnsafePointer<Float>, rowCount: Int) {}
}

/// A routed-expert MoE block: router → top-k → tokens grouped by expert → one matrix product
/// per expert over all its tokens → weighted sum; plus an optional sigmoid-gated shared expert.
struct SparseMoEBlock {
    let layer: Int
    /// `[experts, hidden]`
    let router: WeightMatrix
    let expertCount: Int
    let topK: Int
    let normalizeTopK: Bool
    let sharedExpert: DenseMLP?
    /// `[1, hidden]`
    let sharedExpertGate: WeightMatrix?

    init(layer: Int, config: ModelConfig, description: ArchitectureDescription, weights: WeightSource) throws {
        self.layer = layer
        let hidden = config.hiddenSize
        router = try weights.matrix(description.routerName(layer), rows: config.expertCount, cols: hidden)
        expertCount = config.expertCount
        topK = config.expertsPerToken
        normalizeTopK = config.normTopKProb
        let prefix = description.feedForwardPrefix(layer)
        if description.hasSharedExpert && weights.contains("\(prefix).shared_expert.gate_proj.weight") {
            sharedExpert = try DenseMLP(prefix: "\(prefix).shared_expert", hidden: hidden,
                                        width: config.sharedExpertIntermediateSize, source: weights)
            sharedExpertGate = try weights.matrix("\(prefix).shared_expert_gate.weight", rows: 1, cols: hidden)
        } else {
            sharedExpert = nil
            sharedExpertGate = nil
        }
    }

    /// Routes each row: softmax over all experts in float32, top-k, optional renormalisation.
    func route(_ x: UnsafePointer<Float>, rowCount: Int) -> [TokenRouting] {
        let logits = AlignedBuffer<Float>(count: rowCount * expertCount) // [T, experts]
        router.apply(x, rowCount: rowCount, into: logits.pointer)
        return (0..<rowCount).map { row in
            let probabilities = logits.pointer + row * expertCount
            Ops.softmax(probabilities, count: expertCount)
            let chosen = Ops.topK(probabilities, count: expertCount, k: topK)
            var weights = chosen.map { probabilities[$0] }
            if normalizeTopK {
                let total = weights.reduce(0, +)
                weights = weights.map { $0 / total }
            }
            return TokenRouting(experts: chosen, weights: weights)
        }
    }

    /// `output[T, hidden] = moe(x[T, hidden])`, reaching experts only through `provider`.
    func forward(_ x: UnsafePointer<Float>, rowCount: Int, hidden: Int, provider: ExpertProvider,
                 observer: RoutingObserver?, output: UnsafeMutablePointer<Float>) throws {
        let routes = route(x, rowCount: rowCount)
        // The observer (the predictor, which prefetches later layers' experts) hears of the
        // routing once this layer's experts are pinned — inside the first expert callback — so
        // that room for its prefetches is never made by evicting experts this layer is about
        // to use. Announced before pinning, a 64-token prefill evicted and re-read its own
        // prefetched experts and ran 40% slower with prefetch than without.
        var announced = false
        func announce() {
            guard !announced else { return }
            announced = true
            observer?.didRoute(layer: layer, routes: routes, gateInput: x, rowCount: rowCount)
        }

        // Group (row, weight) pairs by expert so each expert runs once over all its rows.
        var rowsByExpert: [Int: [(row: Int, weight: Float)]] = [:]
        for (row, routing) in routes.enumerated() {
            for (expert, weight) in zip(routing.experts, routing.weights) {
                rowsByExpert[expert, default: []].append((row, weight))
            }
        }
        output.update(repeating: 0, count: rowCount * hidden)
        let maxRows = rowsByExpert.values.map(\.count).max() ?? 0
        let gathered = AlignedBuffer<Float>(count: maxRows * hidden) // [n, hidden]
        let expertOutput = AlignedBuffer<Float>(count: maxRows * hidden) // [n, hidden]
        try provider.withExperts(layer: layer, experts: rowsByExpert.keys.sorted()) { expert, weights in
            announce()
            let assigned = rowsByExpert[expert]!
            for (i, entry) in assigned.enumerated() {
                (gathered.pointer + i * hidden).update(from: x + entry.row * hidden, count: hidden)
            }
            DenseMLP.apply(weights, gathered.pointer, rowCount: assigned.count, output: expertOutput.pointer)
            for (i, entry) in assigned.enumerated() {
                Ops.addScaled(output + entry.row * hidden, expertOutput.pointer + i * hidden, alpha: entry.weight, count: hidden)
            }
        }
        announce()

        if let sharedExpert, let sharedExpertGate {
            let shared = AlignedBuffer<Float>(count: rowCount * hidden) // [T, hidden]
            let gate = AlignedBuffer<Float>(count: rowCount)            // [T, 1]
            sharedExpert.forward(x, rowCount: rowCount, output: shared.pointer)
            sharedExpertGate.apply(x, rowCount: rowCount, into: gate.pointer)
            for row in 0..<rowCount {
                Ops.addScaled(output + row * hidden, shared.pointer + row * hidden, alpha: Ops.sigmoid(gate[row]), count: hidden)
            }
        }
    }
}
