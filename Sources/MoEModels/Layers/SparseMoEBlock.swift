import Foundation
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

    /// A step is about to run; `lastRows` are the rows holding each sequence's last new token
    /// (the tokens whose next token the following step will run), in ascending order.
    func willRunStep(lastRows: [Int])
}

extension RoutingObserver {
    public func willRunAttention(layer: Int, input: UnsafePointer<Float>, rowCount: Int) {}
    public func willRunStep(lastRows: [Int]) {}
}

/// Sizes of the MoE block's scratch that the memory plan accounts for.
public enum SparseMoEBlockLimits {
    /// Steps of at most this many rows keep one output slot per (token, rank).
    public static let parallelRowLimit = 64
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
    /// Whether one token's experts are spread over `expertWorkers` threads (large experts only).
    let parallelSingleRow: Bool

    init(layer: Int, config: ModelConfig, description: ArchitectureDescription, weights: WeightSource) throws {
        self.layer = layer
        let hidden = config.hiddenSize
        router = try weights.matrix(description.routerName(layer), rows: config.expertCount, cols: hidden)
        expertCount = config.expertCount
        topK = config.expertsPerToken
        normalizeTopK = config.normTopKProb
        parallelSingleRow = 3 * hidden * config.expertIntermediateSize >= Self.parallelSingleRowWeights
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

    /// Steps of at most this many token rows run their experts on `expertWorkers` threads;
    /// larger ones (prefill chunks) run them one at a time, each as a GEMM that is itself
    /// spread over the cores when large.
    static let parallelRowLimit = SparseMoEBlockLimits.parallelRowLimit
    /// Threads a decode step's experts are spread over (the machine's cores, at most 2 here:
    /// more would take the cores the expert readers and the GEMMs' own threads need).
    static let expertWorkers = min(2, ProcessInfo.processInfo.activeProcessorCount)
    /// Experts of at least this many weights run on `expertWorkers` threads even for one token.
    /// Measured (one sequence, everything resident): the demo's 98 K-weight experts decoded 20%
    /// slower with two workers (the hand-off costs more than an expert), while 1.6 M-weight
    /// experts (the widened demo) went 140 -> 173 tok/s and OLMoE's 6.3 M-weight q4 experts
    /// 7.4-8.3 -> 9.0-9.8 tok/s (docs/PERFORMANCE.md).
    static let parallelSingleRowWeights = 1 << 19

    /// `output[T, hidden] = moe(x[T, hidden])`, reaching experts only through `provider`.
    func forward(_ x: UnsafePointer<Float>, rowCount: Int, hidden: Int, provider: ExpertProvider,
                 observer: RoutingObserver?, output: UnsafeMutablePointer<Float>) throws {
        var routes = route(x, rowCount: rowCount)
        // Opt-in lossy mode: weak experts that would cost a read are left out (WeakExpertSkipping).
        provider.skipWeakMissing(layer: layer, routes: &routes)
        // The observer (the predictor, which prefetches later layers' experts) hears of the
        // routing once this layer's experts are pinned, so that room for its prefetches is
        // never made by evicting experts this layer is about to use. Announced before
        // pinning, a 64-token prefill evicted and re-read its own prefetched experts and ran
        // 40% slower with prefetch than without.
        let announce: () -> Void = { observer?.didRoute(layer: layer, routes: routes, gateInput: x, rowCount: rowCount) }

        // Group (row, slot, weight) by expert so each expert runs once over all its rows;
        // `slot` is the expert's rank in the row's routing.
        var rowsByExpert: [Int: [(row: Int, slot: Int, weight: Float)]] = [:]
        for (row, routing) in routes.enumerated() {
            for (slot, (expert, weight)) in zip(routing.experts, routing.weights).enumerated() {
                rowsByExpert[expert, default: []].append((row, slot, weight))
            }
        }
        output.update(repeating: 0, count: rowCount * hidden)
        let maxRows = rowsByExpert.values.map(\.count).max() ?? 0
        let experts = rowsByExpert.keys.sorted()

        if rowCount <= Self.parallelRowLimit {
            // Each expert's output rows go to their (row, slot) place, and rows are summed in
            // slot order afterwards: the result does not depend on which thread ran which
            // expert, on which experts were resident, or on the other sequences of the step.
            // One token's few small experts are not worth a thread hand-off (see
            // `parallelSingleRowWeights`); large ones are.
            let workers = rowCount > 1 || parallelSingleRow ? Self.expertWorkers : 1
            let contributions = AlignedBuffer<Float>(count: rowCount * topK * hidden) // [T, k, hidden]
            // Per worker: the expert's input rows and its output rows, [n, hidden] each.
            let gathered = (0..<workers).map { _ in AlignedBuffer<Float>(count: maxRows * hidden) }
            let produced = (0..<workers).map { _ in AlignedBuffer<Float>(count: maxRows * hidden) }
            try provider.withExperts(layer: layer, experts: experts, workers: workers, pinned: announce) { worker, expert, weights in
                let assigned = rowsByExpert[expert]!
                let input = gathered[worker].pointer, expertOutput = produced[worker].pointer
                for (i, entry) in assigned.enumerated() {
                    (input + i * hidden).update(from: x + entry.row * hidden, count: hidden)
                }
                DenseMLP.apply(weights, input, rowCount: assigned.count, output: expertOutput)
                for (i, entry) in assigned.enumerated() {
                    (contributions.pointer + (entry.row * topK + entry.slot) * hidden)
                        .update(from: expertOutput + i * hidden, count: hidden)
                }
            }
            for (row, routing) in routes.enumerated() {
                for (slot, weight) in routing.weights.enumerated() {
                    Ops.addScaled(output + row * hidden, contributions.pointer + (row * topK + slot) * hidden, alpha: weight, count: hidden)
                }
            }
        } else {
            let gathered = AlignedBuffer<Float>(count: maxRows * hidden) // [n, hidden]
            let expertOutput = AlignedBuffer<Float>(count: maxRows * hidden) // [n, hidden]
            try provider.withExperts(layer: layer, experts: experts, workers: 1, pinned: announce) { _, expert, weights in
                let assigned = rowsByExpert[expert]!
                for (i, entry) in assigned.enumerated() {
                    (gathered.pointer + i * hidden).update(from: x + entry.row * hidden, count: hidden)
                }
                DenseMLP.apply(weights, gathered.pointer, rowCount: assigned.count, output: expertOutput.pointer)
                for (i, entry) in assigned.enumerated() {
                    Ops.addScaled(output + entry.row * hidden, expertOutput.pointer + i * hidden, alpha: entry.weight, count: hidden)
                }
            }
        }

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
