import Foundation
import ModelFormats
import TensorMath

/// Sizes of the MoE block's scratch that the memory plan accounts for.
public enum SparseMoEBlockLimits {
    /// Steps of at most this many rows run their experts on two threads; larger ones too, unless
    /// `MOE_PREFILL_EXPERTS=serial` runs them one expert at a time (`SparseMoEBlock.prefillOnWorkers`).
    /// Every step keeps one output slot per (token, rank).
    public static let parallelRowLimit = 64
}

/// A routed-expert MoE block: router → the architecture's selection (`RouterSpec`) → tokens
/// grouped by expert → one matrix product per expert over all its tokens → weighted sum;
/// plus the architecture's shared expert, if any.
struct SparseMoEBlock {
    let layer: Int
    /// `[experts, hidden]`
    let router: WeightMatrix
    /// `[experts]` added to the router's logits (gpt-oss), nil for none.
    let routerBias: [Float]?
    let expertCount: Int
    /// Scores, selection and mixing weights.
    let routing: RouterSpec
    let activation: Activation
    let sharedExpert: DenseMLP?
    /// `[1, hidden]`: `sigmoid(gate · x)` scales the shared expert's output; nil for an ungated one.
    let sharedExpertGate: WeightMatrix?
    /// Whether one token's experts are spread over `expertWorkers` threads (large experts only).
    let parallelSingleRow: Bool

    init(layer: Int, config: ModelConfig, description: ArchitectureDescription, weights: WeightSource) throws {
        self.layer = layer
        let hidden = config.hiddenSize
        router = try weights.matrix(description.routerName(layer), rows: config.expertCount, cols: hidden)
        routerBias = try description.routerBiasName.map { try weights.vector($0(layer), count: config.expertCount) }
        expertCount = config.expertCount
        var routing = description.router(config)
        if let biasName = description.correctionBiasName(layer) {
            routing.correctionBias = try weights.vector(biasName, count: config.expertCount)
        }
        self.routing = routing
        activation = description.activation(for: config)
        parallelSingleRow = 3 * hidden * config.expertIntermediateSize >= Self.parallelSingleRowWeights
        // Qwen2-MoE checkpoints with shared_expert_intermediate_size 0 carry no shared expert.
        if let shared = description.sharedExpert(config, layer), weights.contains("\(shared.prefix).gate_proj.weight") {
            sharedExpert = try DenseMLP(prefix: shared.prefix, hidden: hidden, width: shared.width,
                                        activation: activation, source: weights)
            sharedExpertGate = try shared.isGated ? weights.matrix(shared.sigmoidGateName, rows: 1, cols: hidden) : nil
        } else {
            sharedExpert = nil
            sharedExpertGate = nil
        }
    }

    /// Routes each row with the architecture's rule into `routes[row]` (their lists reused);
    /// `logits` is `[T, experts]` scratch.
    func route(_ x: UnsafePointer<Float>, rowCount: Int, logits: UnsafeMutablePointer<Float>, into routes: inout [TokenRouting]) {
        router.apply(x, rowCount: rowCount, into: logits)
        if let routerBias {
            for row in 0..<rowCount {
                for e in 0..<expertCount { logits[row * expertCount + e] += routerBias[e] }
            }
        }
        for row in 0..<rowCount { routing.route(logits + row * expertCount, count: expertCount, into: &routes[row]) }
    }

    /// Steps of at most this many token rows run their experts on `expertWorkers` threads;
    /// larger ones (prefill chunks) run them one at a time, each as a GEMM that is itself
    /// spread over the cores when large.
    static let parallelRowLimit = SparseMoEBlockLimits.parallelRowLimit
    /// Threads a decode step's experts are spread over (the machine's cores, at most 2 here:
    /// more would take the cores the expert readers and the GEMMs' own threads need).
    static let expertWorkers = min(2, ProcessInfo.processInfo.activeProcessorCount)
    /// Experts of at least this many weights run on `expertWorkers` threads even for one token.
    /// Measured (one sequence, everything resident): 1.6 M-weight experts (the widened demo) went
    /// 140 -> 173 tok/s and OLMoE's 6.3 M-weight q4 experts 7.4-8.3 -> 9.0-9.8 tok/s
    /// (docs/PERFORMANCE.md). The demo's 98 K-weight experts once decoded 20% slower with two
    /// workers, when each hand-off woke a GCD worker; on the core pair's ready helper they decode
    /// 1.26x faster (paired, 5 of 6 rounds, docs/BENCHMARKS.md session 16), hence 64 K.
    /// `MOE_PARALLEL_EXPERT_WEIGHTS` overrides it (for measurements).
    static let parallelSingleRowWeights = ProcessInfo.processInfo.environment["MOE_PARALLEL_EXPERT_WEIGHTS"].flatMap { Int($0) } ?? 1 << 16
    /// Whether larger steps (prefill chunks) also spread whole experts over `expertWorkers` threads,
    /// each expert's products unsplit: the demo's 98 K-weight experts are products too small to
    /// split (1 M multiply-adds for ~32 tokens), so a prefill ran them on one core.
    /// `MOE_PREFILL_EXPERTS=serial` keeps one expert at a time, each product split (for measurements).
    static let prefillOnWorkers = ProcessInfo.processInfo.environment["MOE_PREFILL_EXPERTS"] != "serial"

    /// `output[T, hidden] = moe(x[T, hidden])`, reaching experts only through `provider`.
    /// Scratch comes from `workspace`, sized for at least `rowCount` rows.
    ///
    /// `shadow`: where the partial output of the experts that ran goes, and what to run on it
    /// once the resident experts have run while misses still load (`ShadowRouting`); decode only.
    /// With surrogates (`ShadowHook.surrogates`) they stand in for the experts still loading and,
    /// in the modes that run early, the shadow also runs as the layer routes, when a read is
    /// needed, on the surrogates of every chosen expert (`SurrogateShadow`).
    func forward(_ x: UnsafePointer<Float>, rowCount: Int, hidden: Int, provider: ExpertProvider,
                 observer: RoutingObserver?, workspace: ForwardWorkspace, output: UnsafeMutablePointer<Float>,
                 shadow: ShadowHook? = nil) throws {
        let topK = routing.topK
        workspace.sharedExpertDone = false
        // Every list below is the workspace's, reused: a decode step allocates nothing.
        var routes = workspace.takeRoutes(rows: rowCount)
        defer { workspace.giveBack(routes: &routes) }
        route(x, rowCount: rowCount, logits: workspace.routerLogits.pointer, into: &routes)
        // Opt-in lossy mode: weak experts that would cost a read are left out (WeakExpertSkipping).
        provider.skipWeakMissing(layer: layer, routes: &routes)
        // The observer (the predictor, which prefetches later layers' experts) hears of the
        // routing once this layer's experts are pinned (the `pinned` closures below), so that
        // room for its prefetches is never made by evicting experts this layer is about to use.
        // Announced before pinning, a 64-token prefill evicted and re-read its own prefetched
        // experts and ran 40% slower with prefetch than without.

        // Group the entries `row·k + slot` by expert (a counting sort, stable: rows in order, then
        // slots) so each expert runs once over all its rows; `slot` is the expert's rank in the
        // row's routing. Expert `e`'s entries are `entries[starts[e] ..< starts[e + 1]]`.
        let starts = workspace.expertStarts.pointer   // [experts + 1]
        let entries = workspace.expertEntries.pointer // [T, k]
        starts.update(repeating: 0, count: expertCount + 1)
        for routing in routes {
            for expert in routing.experts { starts[expert + 1] += 1 }
        }
        var experts = workspace.takeExperts() // the distinct experts, ascending
        defer { workspace.giveBack(experts: &experts) }
        for expert in 0..<expertCount where starts[expert + 1] > 0 { experts.append(expert) }
        for expert in 0..<expertCount { starts[expert + 1] += starts[expert] }
        for (row, routing) in routes.enumerated() {
            for (slot, expert) in routing.experts.enumerated() {
                entries[starts[expert]] = row * topK + slot
                starts[expert] += 1
            }
        }
        // Each `starts[e]` now holds the end of `e`'s entries: shift them back into starts.
        for expert in stride(from: expertCount, to: 0, by: -1) { starts[expert] = starts[expert - 1] }
        starts[0] = 0
        output.update(repeating: 0, count: rowCount * hidden)

        // Each expert's output rows go to their (row, slot) place, and rows are summed in slot
        // order afterwards: the result does not depend on which thread ran which expert, on which
        // experts were resident (they run resident first), on the other sequences of the step or
        // on the step's size, so a prompt row has the same bits in any prefill chunk.
        let contributions = workspace.contributions // [T, k, hidden]
        if rowCount <= Self.parallelRowLimit || Self.prefillOnWorkers {
            // One token's few small experts are not worth a thread hand-off (see
            // `parallelSingleRowWeights`); large ones are.
            let workers = rowCount > 1 || parallelSingleRow ? Self.expertWorkers : 1
            // The shadow's input: Σ over the (row, slot) places of the experts that ran of
            // weight · output, [T, hidden] (their rows are written: `body` returned for them).
            // The shared expert (always resident) runs first there, and is not run again below.
            var residentsRan: (([Int]) -> Void)?
            // Surrogates of this layer's experts, where the shadow has them and uses them.
            let surrogates = shadow?.surrogates.flatMap { $0.covers(layer: layer) ? $0 : nil }
            let mode = shadow?.surrogateMode ?? .off
            // The shadow's input, into `partial`: the experts in `completed` from their outputs,
            // the others from their surrogates where `surrogates` is given (else left out), and
            // the shared expert (run once per layer, whichever shadow needs it first).
            func estimate(_ partial: UnsafeMutablePointer<Float>, routed: [TokenRouting], completed: [Int], surrogates: ExpertSurrogates?) {
                IntegerDotKernels.serially {
                    partial.update(repeating: 0, count: rowCount * hidden)
                    for (row, routing) in routed.enumerated() {
                        for (slot, expert) in routing.experts.enumerated() {
                            if completed.contains(expert) {
                                Ops.addScaled(partial + row * hidden, contributions.pointer + (row * topK + slot) * hidden,
                                              alpha: routing.weights[slot], count: hidden)
                            } else if let surrogates {
                                // Not run yet: its surrogate stands in.
                                surrogates.accumulate(layer: layer, expert: expert, input: x + row * hidden,
                                                      weight: routing.weights[slot], into: partial + row * hidden)
                            }
                        }
                    }
                    if sharedExpert != nil {
                        if !workspace.sharedExpertDone { runSharedExpert(x, rowCount: rowCount, hidden: hidden, workspace: workspace) }
                        addSharedExpert(into: partial, rowCount: rowCount, hidden: hidden, workspace: workspace)
                    }
                }
            }
            if let shadow {
                let routed = routes, filling = mode.fillsMissing ? surrogates : nil
                residentsRan = { completed in
                    estimate(shadow.partial, routed: routed, completed: completed, surrogates: filling)
                    shadow.run(false)
                }
            }
            try provider.withExperts(layer: layer, experts: experts, workers: workers, pinned: {
                observer?.didRoute(layer: layer, routes: routes, gateInput: x, rowCount: rowCount)
                // The early shadow: as soon as the layer routes, and only where it reads (where
                // every expert is resident the next layer's input is compute, not reads, away),
                // after the layer's own reads are queued so its guesses wait behind them.
                if let shadow, let surrogates, mode.runsEarly, provider.isReading(layer: layer, experts: experts) {
                    estimate(shadow.partial, routed: routes, completed: [], surrogates: surrogates)
                    shadow.run(true)
                }
            }, residentsRan: mode.runsLate || surrogates == nil ? residentsRan : nil, startsBeforeDown: true) { worker, expert, weights in
                let assigned = UnsafeBufferPointer(start: entries + starts[expert], count: starts[expert + 1] - starts[expert])
                // Per worker: the expert's input rows and its output rows, [n, hidden] each.
                let scratch = workspace.workers[worker]
                let input = scratch.gathered.pointer, expertOutput = scratch.produced.pointer
                for (i, entry) in assigned.enumerated() {
                    (input + i * hidden).update(from: x + entry / topK * hidden, count: hidden)
                }
                // The workers already share the cores: each expert's products run unsplit.
                try IntegerDotKernels.serially(workers > 1 && experts.count > 1) {
                    try DenseMLP.apply(weights, activation: activation, input, rowCount: assigned.count, scratch: scratch, output: expertOutput)
                }
                for (i, entry) in assigned.enumerated() {
                    // entry = row·k + slot: the (row, slot) place, [T, k, hidden].
                    (contributions.pointer + entry * hidden).update(from: expertOutput + i * hidden, count: hidden)
                }
            }
        } else {
            // With `MOE_PREFILL_EXPERTS=serial`, larger steps (prefill chunks) run their experts one
            // at a time, each product itself spread over the cores when large.
            let scratch = workspace.workers[0]
            let gathered = scratch.gathered     // [n, hidden]
            let expertOutput = scratch.produced // [n, hidden]
            try provider.withExperts(layer: layer, experts: experts, workers: 1, pinned: {
                observer?.didRoute(layer: layer, routes: routes, gateInput: x, rowCount: rowCount)
            }) { _, expert, weights in
                let assigned = UnsafeBufferPointer(start: entries + starts[expert], count: starts[expert + 1] - starts[expert])
                for (i, entry) in assigned.enumerated() {
                    (gathered.pointer + i * hidden).update(from: x + entry / topK * hidden, count: hidden)
                }
                try DenseMLP.apply(weights, activation: activation, gathered.pointer, rowCount: assigned.count, scratch: scratch,
                                   output: expertOutput.pointer)
                for (i, entry) in assigned.enumerated() {
                    (contributions.pointer + entry * hidden).update(from: expertOutput.pointer + i * hidden, count: hidden)
                }
            }
        }
        for (row, routing) in routes.enumerated() {
            for (slot, weight) in routing.weights.enumerated() {
                Ops.addScaled(output + row * hidden, contributions.pointer + (row * topK + slot) * hidden, alpha: weight, count: hidden)
            }
        }

        if sharedExpert != nil {
            if !workspace.sharedExpertDone { runSharedExpert(x, rowCount: rowCount, hidden: hidden, workspace: workspace) }
            workspace.sharedExpertDone = false
            addSharedExpert(into: output, rowCount: rowCount, hidden: hidden, workspace: workspace)
        }
    }

    /// The shared expert's output and gate for every row, into the workspace's `sharedOutput`
    /// `[T, hidden]` and `sharedGate` `[T]`.
    private func runSharedExpert(_ x: UnsafePointer<Float>, rowCount: Int, hidden: Int, workspace: ForwardWorkspace) {
        guard let sharedExpert else { return }
        sharedExpert.forward(x, rowCount: rowCount, scratch: workspace.workers[0], output: workspace.sharedOutput.pointer)
        sharedExpertGate?.apply(x, rowCount: rowCount, into: workspace.sharedGate.pointer)
        workspace.sharedExpertDone = true
    }

    /// `output[T, hidden] += gate · shared` from `runSharedExpert`'s results.
    private func addSharedExpert(into output: UnsafeMutablePointer<Float>, rowCount: Int, hidden: Int, workspace: ForwardWorkspace) {
        let shared = workspace.sharedOutput.pointer, gate = workspace.sharedGate.pointer
        for row in 0..<rowCount {
            // Ungated shared experts (DeepSeek, GLM-4.5) are added with weight 1.
            let alpha = sharedExpertGate == nil ? 1 : Ops.sigmoid(gate[row])
            Ops.addScaled(output + row * hidden, shared + row * hidden, alpha: alpha, count: hidden)
        }
    }
}

/// What the MoE block runs a shadow of the next layer with (`ShadowRouting`), for one step.
struct ShadowHook {
    /// `[rows, hidden]`: the estimated MoE output the shadow runs on.
    let partial: UnsafeMutablePointer<Float>
    /// Runs the shadow on `h_mid + partial` and reports its routing; `early`: as the layer routes.
    let run: (_ early: Bool) -> Void
    /// Linear stand-ins for the experts' outputs, or nil.
    let surrogates: ExpertSurrogates?
    /// Where the shadow runs and what the surrogates stand in for (with surrogates).
    let surrogateMode: SurrogateShadow
}

/// Where the shadow of the next layer runs when the model has expert surrogates
/// (`ExpertSurrogates`), and which experts they stand in for.
public enum SurrogateShadow: String, Sendable, CaseIterable {
    /// Surrogates unused: the shadow runs after the residents, on their output alone.
    case off
    /// As the layer routes (where it reads), on the surrogates of every chosen expert; then
    /// after the residents, on their output alone.
    case early
    /// After the residents, with the surrogates of the experts still loading filled in.
    case fill
    /// Both: early, then refined after the residents.
    case both
    /// Early only, the shadow after the residents not run (where a layer has no surrogates, it still runs).
    case earlyOnly = "early-only"
    /// Early, adding only the experts it is confident of (`ShadowRouting.run(confidentFloor:)`),
    /// then after the residents with the missing filled in.
    case confident

    var runsEarly: Bool { self == .early || self == .both || self == .earlyOnly || self == .confident }
    var fillsMissing: Bool { self == .fill || self == .both || self == .confident }
    var runsLate: Bool { self != .earlyOnly }
}
