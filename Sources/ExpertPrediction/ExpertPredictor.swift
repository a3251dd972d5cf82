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
    /// What happened so far.
    public private(set) var statistics: PredictionStatistics
    /// Chained observer (for example a trace recorder) called after this one.
    public var next: RoutingObserver?
    /// Fitted maps that replace the target router in the cross-layer gate where present.
    public let probes: CrossLayerProbes?

    private let routers: [WeightMatrix?]
    private let moeLayers: [Int]
    private let topK: Int
    private let hidden: Int
    /// Experts predicted for each layer in the current step, not yet checked.
    private var pending: [Set<Int>]
    /// The experts each layer used in the last `historyTokens` steps, newest last.
    private var history: [[Set<Int>]]
    /// The experts the first MoE layer used in the last step (`FirstLayerPrediction.history`).
    private var lastFirstLayerExperts: Set<Int> = []

    public init(model: TransformerModel, configuration: PredictorConfiguration, provider: ExpertProvider?,
                probes: CrossLayerProbes? = nil) {
        self.configuration = configuration
        self.provider = provider
        self.probes = probes
        let layerCount = model.config.layerCount
        routers = (0..<layerCount).map { model.router(forLayer: $0) }
        moeLayers = model.config.moeLayers
        topK = model.config.expertsPerToken
        hidden = model.config.hiddenSize
        statistics = PredictionStatistics(layerCount: layerCount)
        pending = Array(repeating: [], count: layerCount)
        history = Array(repeating: [], count: layerCount)
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
        if configuration.crossLayer, let position = moeLayers.firstIndex(of: layer) {
            for target in moeLayers.dropFirst(position + 1).prefix(configuration.depth) {
                predict(layer: target, from: gateInput, rowCount: rowCount, probe: probes?.probe(from: layer, to: target))
            }
        }
        next?.didRoute(layer: layer, routes: routes, gateInput: gateInput, rowCount: rowCount)
    }

    /// Steps of at most this many rows (decode steps) apply `minProbability` and the cache's
    /// speculative bound; larger ones (prefill chunks) are the layer pipeline.
    static let confidentRowLimit = 16

    /// Applies `layer`'s router — or `probe`, a fitted map to its logits — to `rows` and
    /// prefetches the union of each row's top (k + m).
    private func predict(layer: Int, from rows: UnsafePointer<Float>, rowCount: Int, probe: CrossLayerProbes.Probe? = nil) {
        guard let router = routers[layer] else { return }
        let scorer = probe?.weight ?? router
        let experts = scorer.rows
        let logits = AlignedBuffer<Float>(count: rowCount * experts) // [T, experts]
        scorer.apply(rows, rowCount: rowCount, into: logits.pointer)
        if let bias = probe?.bias {
            for row in 0..<rowCount { for e in 0..<experts { logits.pointer[row * experts + e] += bias[e] } }
        }
        var chosen = Set<Int>()
        let width = min(topK + configuration.extraWidth, experts)
        // The probability floor is for decode steps: a prefill chunk's union covers most
        // experts with high precision whatever each guess's probability (and on uniformly
        // routed models no single probability would pass), so its pipeline keeps every guess.
        let floor = rowCount <= Self.confidentRowLimit ? configuration.minProbability : 0
        for row in 0..<rowCount {
            let probabilities = logits.pointer + row * experts
            Ops.softmax(probabilities, count: experts)
            var mass: Float = 0
            for expert in Ops.topK(probabilities, count: experts, k: width) {
                if probabilities[expert] < floor { break } // the rest are smaller still
                chosen.insert(expert)
                mass += probabilities[expert]
                if mass >= configuration.cumulativeThreshold { break }
            }
        }
        add(chosen, to: layer, pipeline: rowCount > Self.confidentRowLimit)
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
