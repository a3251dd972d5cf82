import Foundation
import ModelFormats
import MoEModels
import TensorMath

/// Guesses which experts each MoE layer will need before its router runs, from the routers
/// of later layers applied to earlier hidden states, and asks the expert provider to prefetch
/// them. Prediction never changes what is computed: the provider only loads earlier.
///
/// Attach it as the model's `routingObserver`; it sees each layer's attention input and gate
/// input as the forward pass reaches them.
public final class ExpertPredictor: RoutingObserver, @unchecked Sendable {
    public let configuration: PredictorConfiguration
    /// Where prefetches go; nil measures predictions without loading anything.
    public let provider: ExpertProvider?
    /// What happened so far: a copy taken under a lock, so another thread (the server's
    /// statistics sampler) may read it while the engine thread updates it. Only the engine
    /// thread writes, so each read-modify-write below loses nothing.
    public private(set) var statistics: PredictionStatistics {
        get { statisticsLock.withLock { storedStatistics } }
        set { statisticsLock.withLock { storedStatistics = newValue } }
    }
    private var storedStatistics: PredictionStatistics
    private let statisticsLock = NSLock()
    /// Chained observer (for example a trace recorder) called after this one.
    public var next: RoutingObserver?
    /// Fitted maps that replace the target router in the cross-layer gate where present.
    public let probes: CrossLayerProbes?

    private let routers: [WeightMatrix?]
    /// Router biases (gpt-oss), added to the guessed logits as the layer adds them.
    private let routerBiases: [[Float]?]
    private let moeLayers: [Int]
    private let topK: Int
    /// The model's own routing rule per layer (with its correction bias): guesses score and
    /// select experts as the router will.
    private let routings: [RouterSpec]
    private let hidden: Int
    /// Experts predicted for each layer in the current step, not yet checked.
    private var pending: [Set<Int>]
    /// The experts each layer used in the last `historyTokens` steps, newest last.
    private var history: [[Set<Int>]]
    /// The experts the first MoE layer used in the last step (`FirstLayerPrediction.history`).
    private var lastFirstLayerExperts: Set<Int> = []
    /// The rows of the current step whose next token the following step runs.
    private var lastRows: [Int] = []
    /// Scores and a probe's hidden activations, reused across layers and steps (grown when a
    /// step has more rows): a decode step predicts every layer, and should not allocate to.
    private var scratch = AlignedBuffer<Float>(count: 0)

    public init(model: TransformerModel, configuration: PredictorConfiguration, provider: ExpertProvider?,
                probes: CrossLayerProbes? = nil) {
        self.configuration = configuration
        self.provider = provider
        self.probes = probes
        let layerCount = model.config.layerCount
        routers = (0..<layerCount).map { model.router(forLayer: $0) }
        routerBiases = (0..<layerCount).map { model.routerBias(forLayer: $0) }
        moeLayers = model.config.moeLayers
        topK = model.config.expertsPerToken
        routings = (0..<layerCount).map { model.routerSpec(forLayer: $0) ?? model.routerSpec }
        hidden = model.config.hiddenSize
        storedStatistics = PredictionStatistics(layerCount: layerCount)
        pending = Array(repeating: [], count: layerCount)
        history = Array(repeating: [], count: layerCount)
    }

    public func willRunSequences(_ sequences: [SequenceRows]) { next?.willRunSequences(sequences) }

    public func sequenceEnded(_ id: Int) { next?.sequenceEnded(id) }

    public func willRunStep(lastRows: [Int]) {
        self.lastRows = lastRows
        next?.willRunStep(lastRows: lastRows)
    }

    public func didRunStep() { next?.didRunStep() }

    /// Withdraws every guess not yet checked against its layer's routing and cancels their
    /// reads that have not started: prefetching is about to pause (`PrefetchSwitch`), and
    /// guesses made for the next step would otherwise be read, and scored, after the pause.
    public func withdrawGuesses() {
        for layer in pending.indices where !pending[layer].isEmpty {
            provider?.cancelPrefetches(layer: layer, experts: pending[layer].sorted())
            pending[layer] = []
        }
    }

    public func willRunAttention(layer: Int, input: UnsafePointer<Float>, rowCount: Int) {
        if layer == 0 { statistics.steps += 1 }
        if configuration.preAttention, routers[layer] != nil {
            predict(layer: layer, from: input, rowCount: rowCount)
        } else if layer == moeLayers.first, configuration.historyTokens == 0 {
            // The first MoE layer has no earlier layer for the cross-layer gate.
            switch configuration.firstLayer {
            case .none: break
            case .embedding: predict(layer: layer, from: input, rowCount: rowCount)
            case .history: add(lastFirstLayerExperts, to: layer, pipeline: false)
            }
        }
        if configuration.historyTokens > 0, routers[layer] != nil {
            add(history[layer].reduce(into: Set<Int>()) { $0.formUnion($1) }, to: layer, pipeline: false)
        }
        next?.willRunAttention(layer: layer, input: input, rowCount: rowCount)
    }

    public func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) {
        // Score what was predicted for this layer against what the router chose.
        let used = routes.reduce(into: Set<Int>()) { $0.formUnion($1.experts) }
        let predicted = pending[layer]
        statistics.perLayer[layer].used += used.count
        statistics.perLayer[layer].predicted += predicted.count
        statistics.perLayer[layer].predictedAndUsed += used.intersection(predicted).count
        pending[layer] = []
        if layer == moeLayers.first { lastFirstLayerExperts = used }
        // Wrong guesses still waiting in the read queue would take disk time from the reads
        // this and the next layers need: drop them.
        let wrong = predicted.subtracting(used)
        if !wrong.isEmpty { provider?.cancelPrefetches(layer: layer, experts: wrong.sorted()) }
        if configuration.historyTokens > 0 {
            history[layer].append(used)
            if history[layer].count > configuration.historyTokens { history[layer].removeFirst() }
        }
        // Cross-layer gate: the next `depth` MoE layers' routers on this layer's gate input.
        if configuration.crossLayer, Self.saturatedGuesses, saturatedDecode(rowCount: rowCount, layer: layer),
           let position = moeLayers.firstIndex(of: layer), position + 1 < moeLayers.count {
            predictSaturated(layer: moeLayers[position + 1], from: gateInput, rowCount: rowCount,
                             probe: probes?.probe(from: layer, to: moeLayers[position + 1]))
        }
        if configuration.crossLayer, !saturatedDecode(rowCount: rowCount, layer: layer), let position = moeLayers.firstIndex(of: layer) {
            let batchDecode = rowCount > configuration.deepRowLimit && rowCount <= Self.confidentRowLimit
            for distance in 1...(batchDecode ? 1 : max(configuration.depth, 1)) {
                let index = position + distance
                if index < moeLayers.count {
                    let target = moeLayers[index]
                    predict(layer: target, from: gateInput, rowCount: rowCount, probe: probes?.probe(from: layer, to: target),
                            refining: distance == 1)
                } else if index < 2 * moeLayers.count, let probe = probes?.probe(from: layer, to: moeLayers[index - moeLayers.count]) {
                    // Past the last layer the gate wraps round to the next step's first layers,
                    // which only a fitted map can guess (a router belongs to its own token),
                    // and only from each sequence's last row: that is whose next token runs.
                    predictNextStep(layer: moeLayers[index - moeLayers.count], from: gateInput, probe: probe, refining: distance == 1)
                }
            }
        }
        next?.didRoute(layer: layer, routes: routes, gateInput: gateInput, rowCount: rowCount)
    }

    /// The shadow of `layer` (`ShadowRouting`: its attention and router on the previous layer's
    /// output less the experts still loading) is the sharpest guess before the layer routes: it
    /// replaces the guesses made from farther back, as the nearest layer's guess does (those it
    /// does not repeat are withdrawn and their reads cancelled if not started), and its experts
    /// are prefetched. Every expert it chose is a guess: no floor, the router's own selection.
    public func didShadowRoute(layer: Int, routes: [TokenRouting]) {
        let chosen = routes.reduce(into: Set<Int>()) { $0.formUnion($1.experts) }
        statistics.perLayer[layer].shadowRuns += 1
        statistics.perLayer[layer].shadowAdded += chosen.subtracting(pending[layer]).count
        dropGuesses(for: layer, notIn: chosen)
        add(chosen, to: layer, pipeline: false)
        next?.didShadowRoute(layer: layer, routes: routes)
    }

    /// An early shadow's confident experts for `layer` (`didShadowGuess`): prefetched beside the
    /// guesses already made, none withdrawn; counted as shadow additions.
    public func didShadowGuess(layer: Int, experts: [Int]) {
        let chosen = Set(experts)
        statistics.perLayer[layer].shadowAdded += chosen.subtracting(pending[layer]).count
        add(chosen, to: layer, pipeline: false)
        next?.didShadowGuess(layer: layer, experts: experts)
    }

    /// A decode step whose rows choose a layer's experts at least this many times over
    /// (rows × top-k ≥ factor × experts) makes no per-row cross-layer guesses (throughput
    /// mode); it guesses the next layer by votes instead (`predictSaturated`).
    static let saturatedDecodeFactor = 2

    /// Whether this step is one decode token per sequence and so many of them that every
    /// layer's demand reads cover most of its experts: the disk is then busy with reads that
    /// are certainly needed for the whole step, and a guess can only add a wrong read or move
    /// a right one earlier in the same queue. Measured on the widened demo at a quarter of its
    /// experts (docs/BENCHMARKS.md, "Throughput mode"): 32 and 64 sequences decoded 1.04-1.12x
    /// faster without the per-row guesses in four paired runs; 8 sequences (rows × k = experts)
    /// keep them.
    private func saturatedDecode(rowCount: Int, layer: Int) -> Bool {
        guard let experts = routers[layer]?.rows, !lastRows.isEmpty, lastRows.count == rowCount,
              lastRows.last! == rowCount - 1 else { return false }
        return rowCount * topK >= Self.saturatedDecodeFactor * experts
    }

    /// Whether saturated decode steps guess the next layer by votes (`predictSaturated`);
    /// `MOE_SATURATED_GUESSES=off` turns it off (an A/B switch).
    static let saturatedGuesses = ProcessInfo.processInfo.environment["MOE_SATURATED_GUESSES"] != "off"

    /// Throughput mode's guess for the next MoE layer. Each row's top-k for `layer` (its router
    /// or fitted probe on this layer's gate input) is a vote; the experts with at least two
    /// votes are offered, most votes first, and the cache reads the ones it does not hold under
    /// its speculative bound (the layer's top-k experts at a time: the first few not held). It
    /// marks the held ones as about to be used, so they are evicted last until the layer runs.
    ///
    /// Why: in a saturated step the step's own misses keep the disk busy through a layer, but
    /// between a layer's last miss and the next layer's first (the last expert's compute, the
    /// next attention and router over every row) the disk stood idle. The read queue starts
    /// these guesses only once no demand read waits, so they fill that gap. The experts most
    /// rows vote for are nearly certain to be used by at least one. Session 20's version (the
    /// union of probe probabilities above 0.95, read at once) took other layers' cache slots
    /// and was slower; these are fewer and, since session 26, the policy evicts the layer that
    /// just ran first. Measured on the widened demo at a quarter budget, emulated 1.5 GB/s
    /// (docs/BENCHMARKS.md, "Session 29"): 1.08x at 32 sequences and 1.11x at 64, 8 of 8
    /// paired rounds each.
    private func predictSaturated(layer: Int, from rows: UnsafePointer<Float>, rowCount: Int, probe: CrossLayerProbes.Probe?) {
        guard let (scores, experts) = guessLogits(layer: layer, from: rows, rowCount: rowCount, probe: probe) else { return }
        let routing = routings[layer]
        var votes = [Int](repeating: 0, count: experts)
        var chosen: [Int] = []
        chosen.reserveCapacity(topK + 1)   // `select` then writes without allocating
        for row in 0..<rowCount {
            let probabilities = scores + row * experts
            if probe?.output != .selection { routing.scores(probabilities, count: experts) }
            routing.select(probabilities, count: experts, k: topK, into: &chosen)
            for expert in chosen { votes[expert] += 1 }
        }
        let ranked = Self.byVotes(votes).filter { !pending[layer].contains($0) }
        guard !ranked.isEmpty else { return }
        pending[layer].formUnion(ranked)
        provider?.prefetch(layer: layer, experts: ranked, pipeline: false)
    }

    /// The experts with at least two votes (`votes[e]`: rows that chose `e`), most first (the
    /// lower index on ties).
    static func byVotes(_ votes: [Int]) -> [Int] {
        votes.indices.filter { votes[$0] >= 2 }.sorted { (votes[$0], $1) > (votes[$1], $0) }
    }

    /// Steps of at most this many rows (decode steps) apply `minProbability` and the cache's
    /// speculative bound; larger ones (prefill chunks) are the layer pipeline.
    static let confidentRowLimit = 16

    /// Applies `layer`'s router — or `probe`, a fitted map from this input — to `rows` and
    /// prefetches the union of each row's top (k + m) that pass the probability floor.
    ///
    /// `refining`: this is the nearest layer's guess for `layer` (one MoE layer ahead), made
    /// with more information than the guesses from farther back. At decode steps it replaces
    /// them: earlier guesses it does not repeat are dropped, and their reads cancelled if they
    /// have not started, so that they do not hold the disk when this layer's misses need it.
    private func predict(layer: Int, from rows: UnsafePointer<Float>, rowCount: Int, probe: CrossLayerProbes.Probe? = nil,
                         refining: Bool = false) {
        guard let (scores, experts) = guessLogits(layer: layer, from: rows, rowCount: rowCount, probe: probe) else { return }
        let routing = routings[layer]
        let selection = probe?.output == .selection
        var chosen = Set<Int>()
        let width = min(topK + configuration.extraWidth, experts)
        // The probability floor is for decode steps: a prefill chunk's union covers most
        // experts with high precision whatever each guess's probability (and on uniformly
        // routed models no single probability would pass), so its pipeline keeps every guess.
        let decodeStep = rowCount <= Self.confidentRowLimit
        let floor = decodeStep ? (selection ? configuration.minSelectionProbability : configuration.minProbability) : 0
        for row in 0..<rowCount {
            let probabilities = scores + row * experts
            if selection {
                // Independent probabilities of being selected: the floor is the whole rule.
                for e in 0..<experts { probabilities[e] = Ops.sigmoid(probabilities[e]) }
            } else {
                routing.scores(probabilities, count: experts)
            }
            var mass: Float = 0
            for expert in routing.select(probabilities, count: experts, k: width) {
                if probabilities[expert] < floor { break } // the rest are smaller still
                chosen.insert(expert)
                mass += probabilities[expert]
                // Sigmoid scores are not a distribution: their sum says nothing about coverage.
                if !selection && routing.scoring == .softmax && mass >= configuration.cumulativeThreshold { break }
            }
        }
        if refining && decodeStep { dropGuesses(for: layer, notIn: chosen) }
        add(chosen, to: layer, pipeline: !decodeStep)
    }

    /// `layer`'s router logits (with its bias) — or `probe`'s outputs — for `rows`: [T, experts]
    /// in the reused scratch buffer (valid until the next call), and the layer's expert count;
    /// nil for a layer without a router.
    private func guessLogits(layer: Int, from rows: UnsafePointer<Float>, rowCount: Int,
                             probe: CrossLayerProbes.Probe?) -> (UnsafeMutablePointer<Float>, Int)? {
        guard let router = routers[layer] else { return nil }
        let experts = router.rows
        let needed = rowCount * (experts + (probe?.hiddenUnits ?? 0))
        if scratch.count < needed { scratch = AlignedBuffer<Float>(count: needed) }
        let scores = scratch.pointer // [T, experts], then the probe's hidden activations [T, units]
        if let probe {
            probe.apply(rows, rowCount: rowCount, into: scores, scratch: scores + rowCount * experts)
        } else {
            router.apply(rows, rowCount: rowCount, into: scores)
            if let bias = routerBiases[layer] {
                for row in 0..<rowCount { for e in 0..<experts { scores[row * experts + e] += bias[e] } }
            }
        }
        return (scores, experts)
    }

    /// The cross-layer gate past the last MoE layer: `probe` on each sequence's last row guesses
    /// `layer` of the next step. Decode steps only (every row is a sequence's last): a prompt
    /// chunk's next step is the rest of the prompt or its first decode token, and its guesses
    /// would wait a whole chunk in the cache.
    private func predictNextStep(layer: Int, from rows: UnsafePointer<Float>, probe: CrossLayerProbes.Probe, refining: Bool) {
        guard !lastRows.isEmpty, lastRows.count <= Self.confidentRowLimit, lastRows.last! < lastRows.count else { return }
        // Decode steps have one row per sequence, so the last rows are the rows 0..<count.
        predict(layer: layer, from: rows, rowCount: lastRows.count, probe: probe, refining: refining)
    }

    private func dropGuesses(for layer: Int, notIn kept: Set<Int>) {
        let dropped = pending[layer].subtracting(kept)
        guard !dropped.isEmpty else { return }
        pending[layer].subtract(dropped)
        statistics.perLayer[layer].withdrawn += dropped.count
        provider?.cancelPrefetches(layer: layer, experts: dropped.sorted())
    }

    private func add(_ experts: Set<Int>, to layer: Int, pipeline: Bool) {
        let fresh = experts.subtracting(pending[layer])
        let room = configuration.maxPredictedPerLayer - pending[layer].count
        guard !fresh.isEmpty, room > 0 else { return }
        let accepted = Array(fresh.sorted().prefix(room))
        pending[layer].formUnion(accepted)
        provider?.prefetch(layer: layer, experts: accepted, pipeline: pipeline)
    }
}
