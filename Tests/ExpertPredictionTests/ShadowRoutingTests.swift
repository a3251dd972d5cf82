import Foundation
import Testing
import ModelFormats
import MoEModels
@testable import ExpertPrediction

/// Runs every expert, then reports them all as having run "while a read is still running": the
/// shadow then sees the layer's whole output, so its input is exactly the next layer's.
final class ShadowReportingProvider: ExpertProvider, @unchecked Sendable {
    let inner: ExpertProvider
    /// Whether `residentsRan` is called with every expert (else with none: nothing resident).
    var reportEverything = true
    private(set) var prefetched: [(layer: Int, experts: [Int])] = []
    private(set) var cancelled: [(layer: Int, experts: [Int])] = []
    init(_ inner: ExpertProvider) { self.inner = inner }

    func withExperts(layer: Int, experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        try inner.withExperts(layer: layer, experts: experts, body)
    }

    func withExperts(layer: Int, experts: [Int], workers: Int, pinned: () -> Void, residentsRan: (([Int]) -> Void)?,
                     _ body: (Int, Int, ExpertWeights) throws -> Void) throws {
        pinned()
        if !reportEverything { residentsRan?([]) }
        try inner.withExperts(layer: layer, experts: experts) { try body(0, $0, $1) }
        if reportEverything { residentsRan?(experts) }
    }

    func prefetch(layer: Int, experts: [Int], pipeline: Bool) { prefetched.append((layer, experts)) }

    func cancelPrefetches(layer: Int?, experts: [Int]?) -> Int {
        if let layer, let experts { cancelled.append((layer, experts)) }
        return 0
    }
}

/// Records each step's real routing and the shadow's, per layer.
final class RoutingPairs: RoutingObserver {
    var real: [Int: [TokenRouting]] = [:]
    var shadow: [Int: [TokenRouting]] = [:]
    func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) { real[layer] = routes }
    func didShadowRoute(layer: Int, routes: [TokenRouting]) { shadow[layer] = routes }
}

func shadowFixture(_ prefix: String) throws -> (TransformerModel, ShadowReportingProvider) {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/models")
    let name = try #require(try FileManager.default.contentsOfDirectory(atPath: root.path).sorted().first { $0.hasPrefix(prefix) })
    let checkpoint = try CheckpointDirectory(url: root.appendingPathComponent(name))
    let inMemory = try InMemoryExpertProvider(config: checkpoint.config, weights: checkpoint,
                                              names: ArchitectureDescription.of(checkpoint.config.architecture))
    let provider = ShadowReportingProvider(inMemory)
    return (try TransformerModel(config: checkpoint.config, weights: checkpoint, experts: provider), provider)
}

@Suite struct ShadowRoutingTests {
    /// Given the whole of a layer's output, the shadow's attention (the row's own key and value
    /// used in place, not stored) and router are the next layer's: it chooses the same experts
    /// with the same weights, for one sequence and for a batch of two, with q/k norms (Qwen3),
    /// clipping (OLMoE), a gated shared expert (Qwen2-MoE) and sinks (gpt-oss).
    @Test(arguments: ["qwen3moe-headdim", "olmoe-clipqkv", "qwen2moe-shared-top4-norm", "mixtral-gqa-top2", "gptoss-yarn-default"])
    func givenTheWholeLayerOutputTheShadowRoutesAsTheNextLayer(_ fixture: String) throws {
        let (model, _) = try shadowFixture(fixture)
        let pairs = RoutingPairs()
        model.routingObserver = pairs
        model.shadowRouting = true
        let caches = [model.makeCache(), model.makeCache()]
        _ = try model.forward([SequenceInput(cache: caches[0], tokens: [3, 14, 15, 9, 2, 6])])
        _ = try model.forward([SequenceInput(cache: caches[1], tokens: [27, 1, 8])])
        var compared = 0
        for step in 0..<4 {
            let inputs = step < 2 ? [SequenceInput(cache: caches[0], tokens: [5 + step])]
                                  : [SequenceInput(cache: caches[0], tokens: [5 + step]), SequenceInput(cache: caches[1], tokens: [7 + step])]
            pairs.real = [:]; pairs.shadow = [:]
            _ = try model.forward(inputs)
            #expect(!pairs.shadow.isEmpty, "a decode step runs the shadow")
            for (layer, shadowRoutes) in pairs.shadow {
                let real = try #require(pairs.real[layer])
                #expect(shadowRoutes.count == real.count)
                for (s, r) in zip(shadowRoutes, real) {
                    #expect(s.experts == r.experts, "layer \(layer): shadow \(s.experts), router \(r.experts)")
                    for (a, b) in zip(s.weights, r.weights) { #expect(abs(a - b) < 1e-4) }
                    compared += 1
                }
            }
        }
        #expect(compared > 0)
    }

    /// The shadow leaves no trace in what is computed: the logits are bit for bit those of a run
    /// without it (its keys and values are never stored), and prefill chunks do not run it.
    @Test func theShadowChangesNoLogits() throws {
        func logits(shadow: Bool) throws -> ([[Float]], Int) {
            let (model, _) = try shadowFixture("qwen3moe-headdim")
            let pairs = RoutingPairs()
            model.routingObserver = pairs
            model.shadowRouting = shadow
            let cache = model.makeCache()
            var all = try model.forward([SequenceInput(cache: cache, tokens: [3, 14, 15, 9], allLogits: true)])
            let afterPrefill = pairs.shadow.count
            for token in [2, 6, 5, 3] { all += try model.forward([SequenceInput(cache: cache, tokens: [token])]) }
            #expect(afterPrefill == 0, "a prompt chunk runs no shadow")
            return (all, pairs.shadow.count)
        }
        let (with, shadowLayers) = try logits(shadow: true)
        let (without, none) = try logits(shadow: false)
        #expect(with == without)
        #expect(shadowLayers > 0 && none == 0)
    }

    /// Architectures the shadow cannot run (latent attention) never call it.
    @Test func latentAttentionModelsRunNoShadow() throws {
        let (model, _) = try shadowFixture("deepseekv3-noqlora")
        let pairs = RoutingPairs()
        model.routingObserver = pairs
        model.shadowRouting = true
        let cache = model.makeCache()
        _ = try model.forward([SequenceInput(cache: cache, tokens: [3, 14, 15])])
        _ = try model.forward([SequenceInput(cache: cache, tokens: [9])])
        #expect(pairs.shadow.isEmpty)
        #expect(!pairs.real.isEmpty)
    }

    /// The predictor takes the shadow's choice as the layer's guess: it withdraws earlier guesses
    /// the shadow did not repeat (cancelling their reads) and adds the shadow's new experts. Given
    /// the whole output the shadow is the router, so at the decode steps every layer it ran for
    /// was guessed exactly: each guess used, each used expert guessed.
    @Test func thePredictorReplacesItsGuessesWithTheShadows() throws {
        let (model, provider) = try shadowFixture("qwen3moe-headdim")
        let predictor = ExpertPredictor(model: model, configuration: PredictorConfiguration(crossLayer: true, depth: 1), provider: provider)
        model.routingObserver = predictor
        model.shadowRouting = true
        let cache = model.makeCache()
        _ = try model.forward([SequenceInput(cache: cache, tokens: [3, 14, 15, 9])])
        let before = predictor.statistics.perLayer
        for token in [2, 6, 5] { _ = try model.forward([SequenceInput(cache: cache, tokens: [token])]) }
        let after = predictor.statistics.perLayer
        let moeLayers = model.config.moeLayers
        for layer in moeLayers.dropFirst() {
            let runs = after[layer].shadowRuns - before[layer].shadowRuns
            let used = after[layer].used - before[layer].used
            let predicted = after[layer].predicted - before[layer].predicted
            let right = after[layer].predictedAndUsed - before[layer].predictedAndUsed
            #expect(runs == 3, "layer \(layer): one shadow run per decode step")
            #expect(used > 0 && predicted == used && right == used, "layer \(layer): \(right) of \(predicted) guesses used, \(used) used")
        }
        // What was withdrawn was cancelled at the provider, for shadowed layers only.
        let withdrawn = moeLayers.reduce(0) { $0 + after[$1].withdrawn - before[$1].withdrawn }
        let cancelled = provider.cancelled.filter { $0.layer != moeLayers.first }.reduce(0) { $0 + $1.experts.count }
        #expect(cancelled >= withdrawn)
    }

    /// With nothing resident the shadow still runs (on the attention-only estimate), and each of
    /// its choices reaches the provider as a decode prefetch of that layer.
    @Test func withNothingResidentTheShadowStillGuesses() throws {
        let (model, provider) = try shadowFixture("olmoe-clipqkv")
        provider.reportEverything = false
        let predictor = ExpertPredictor(model: model, configuration: PredictorConfiguration(crossLayer: false), provider: provider)
        model.routingObserver = predictor
        model.shadowRouting = true
        let cache = model.makeCache()
        _ = try model.forward([SequenceInput(cache: cache, tokens: [3, 14, 15, 9])])
        let prefetchesBefore = provider.prefetched.count
        _ = try model.forward([SequenceInput(cache: cache, tokens: [2])])
        let moeLayers = model.config.moeLayers
        #expect(predictor.statistics.total.shadowRuns == moeLayers.count - 1)
        let guessed = Set(provider.prefetched.dropFirst(prefetchesBefore).map(\.layer))
        #expect(guessed == Set(moeLayers.dropFirst()))
    }
}
