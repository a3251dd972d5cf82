import Foundation
import Testing
import ModelFormats
import MoEModels
import TensorMath
@testable import ExpertPrediction

/// Runs every expert, then reports them all as having run "while a read is still running": the
/// shadow then sees the layer's whole output, so its input is exactly the next layer's.
final class ShadowReportingProvider: ExpertProvider, @unchecked Sendable {
    let inner: ExpertProvider
    /// Whether `residentsRan` is called with every expert (else with none: nothing resident).
    var reportEverything = true
    private(set) var prefetched: [(layer: Int, experts: [Int])] = []
    private(set) var cancelled: [(layer: Int, experts: [Int])] = []
    /// What `isReading` answers: whether the layer's experts cost a read.
    var reading = true
    init(_ inner: ExpertProvider) { self.inner = inner }

    func isReading(layer: Int, experts: [Int]) -> Bool { reading }

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

/// Records each step's real routing and the shadow's, per layer (and every shadow run in order).
final class RoutingPairs: RoutingObserver {
    var real: [Int: [TokenRouting]] = [:]
    var shadow: [Int: [TokenRouting]] = [:]
    var shadowRuns: [(layer: Int, routes: [TokenRouting])] = []
    func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) { real[layer] = routes }
    func didShadowRoute(layer: Int, routes: [TokenRouting]) {
        shadow[layer] = routes
        shadowRuns.append((layer, routes))
    }
}

/// Surrogates for every MoE layer of `config` (seeded values of scale `scale`, rank `rank`), written to a temporary file.
func surrogatesFile(_ config: ModelConfig, rank: Int, scale: Float, seed: UInt64 = 7, dtype: TensorDType = .f32) throws -> URL {
    var writer = SafetensorsWriter()
    var state = seed
    func values(_ count: Int) -> [Float] {
        (0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return (Float(state >> 40) / Float(1 << 24) - 0.5) * 2 * scale
        }
    }
    let (e, h) = (config.expertCount, config.hiddenSize)
    for layer in config.moeLayers {
        writer.add("surrogate.\(layer).in", shape: [e, rank, h], values: values(e * rank * h), dtype: dtype)
        writer.add("surrogate.\(layer).out", shape: [e, rank, h], values: values(e * rank * h), dtype: dtype)
        writer.add("surrogate.\(layer).bias", shape: [e, h], values: values(e * h), dtype: dtype)
    }
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("surrogates-\(getpid())-\(seed)-\(rank)-\(dtype.rawValue).safetensors")
    try writer.write(to: url)
    return url
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

    /// A surrogate is `bias + Σ_j (in_j · x) out_j`, scaled by the routing weight and added.
    @Test func aSurrogateIsItsLinearMap() throws {
        let (model, _) = try shadowFixture("qwen3moe-headdim")
        let config = model.config
        let url = try surrogatesFile(config, rank: 3, scale: 0.5)
        defer { try? FileManager.default.removeItem(at: url) }
        let surrogates = try ExpertSurrogates.load(url, config: config)
        #expect(surrogates.rank == 3)
        #expect(surrogates.byteCount == config.moeLayers.count * (2 * config.expertCount * 3 + config.expertCount) * config.hiddenSize * 4)
        let file = try SafetensorsFile(path: url.path)
        func tensor(_ name: String) throws -> [Float] { Array(file.bytes(of: try #require(file.entries[name])).bindMemory(to: Float.self)) }
        let (layer, expert, h) = (config.moeLayers.last!, 1, config.hiddenSize)
        let inn = try tensor("surrogate.\(layer).in"), out = try tensor("surrogate.\(layer).out"), bias = try tensor("surrogate.\(layer).bias")
        let x = (0..<h).map { Float($0 % 7) / 7 - 0.4 }
        var expected = (0..<h).map { 1 + 0.25 * bias[expert * h + $0] }
        for j in 0..<3 {
            let row = (expert * 3 + j) * h
            let projection = (0..<h).reduce(Float(0)) { $0 + inn[row + $1] * x[$1] }
            for i in 0..<h { expected[i] += 0.25 * projection * out[row + i] }
        }
        var y = [Float](repeating: 1, count: h)
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { surrogates.accumulate(layer: layer, expert: expert, input: xp.baseAddress!, weight: 0.25, into: $0.baseAddress!) } }
        for i in 0..<h { #expect(abs(y[i] - expected[i]) < 1e-4 * max(1, abs(expected[i]))) }

        // The same values stored as bf16 load widened to f32: as close as bf16 rounding allows, the same bytes in RAM.
        let halfURL = try surrogatesFile(config, rank: 3, scale: 0.5, dtype: .bf16)
        defer { try? FileManager.default.removeItem(at: halfURL) }
        let half = try ExpertSurrogates.load(halfURL, config: config)
        #expect(half.rank == 3 && half.byteCount == surrogates.byteCount)
        var z = [Float](repeating: 1, count: h)
        x.withUnsafeBufferPointer { xp in z.withUnsafeMutableBufferPointer { half.accumulate(layer: layer, expert: expert, input: xp.baseAddress!, weight: 0.25, into: $0.baseAddress!) } }
        let largest = expected.map { abs($0) }.max()!
        for i in 0..<h { #expect(abs(z[i] - expected[i]) < 2e-2 * largest) }
    }

    /// A file that does not fit the model is refused at load, naming the tensor.
    @Test func surrogatesThatDoNotFitTheModelAreRefused() throws {
        let (model, _) = try shadowFixture("qwen3moe-headdim")
        let config = model.config
        var writer = SafetensorsWriter()
        for layer in config.moeLayers {
            writer.add("surrogate.\(layer).in", shape: [config.expertCount, 2, config.hiddenSize + 1], values: .init(repeating: 0, count: config.expertCount * 2 * (config.hiddenSize + 1)))
        }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("surrogates-bad-\(getpid()).safetensors")
        try writer.write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        #expect { try ExpertSurrogates.load(url, config: config) } throws: { "\($0)".contains("surrogate.\(config.moeLayers[0]).in") }
        let stray = try surrogatesFile(config, rank: 2, scale: 0.1, seed: 3)
        defer { try? FileManager.default.removeItem(at: stray) }
        var extra = SafetensorsWriter()
        let file = try SafetensorsFile(path: stray.path)
        for (name, entry) in file.entries { extra.add(name, dtype: entry.dtype, shape: entry.shape, bytes: Array(file.bytes(of: entry))) }
        extra.add("surrogate.99.in", shape: [1], values: [0])
        let strayURL = FileManager.default.temporaryDirectory.appendingPathComponent("surrogates-stray-\(getpid()).safetensors")
        try extra.write(to: strayURL)
        defer { try? FileManager.default.removeItem(at: strayURL) }
        #expect { try ExpertSurrogates.load(strayURL, config: config) } throws: { "\($0)".contains("surrogate.99.in") }
    }

    /// With surrogates, a layer that reads runs the shadow of the next one as it routes, before
    /// any of its experts: on h_mid plus the surrogates of every chosen expert. So it routes as the
    /// shadow after the residents does when nothing was resident and the surrogates fill in every
    /// expert. A layer that reads nothing runs no early shadow. The logits stay bit for bit those of a
    /// run without the shadow.
    @Test func theEarlyShadowRunsAsALayerRoutesOnTheSurrogates() throws {
        func run(_ mode: SurrogateShadow, reading: Bool = true, shadow: Bool = true) throws -> (RoutingPairs, [[Float]]) {
            let (model, provider) = try shadowFixture("qwen3moe-headdim")
            provider.reportEverything = false // the shadow after the residents sees none of them
            provider.reading = reading
            let url = try surrogatesFile(model.config, rank: 4, scale: 0.3)
            defer { try? FileManager.default.removeItem(at: url) }
            model.expertSurrogates = try ExpertSurrogates.load(url, config: model.config)
            model.surrogateShadow = mode
            let pairs = RoutingPairs()
            model.routingObserver = pairs
            model.shadowRouting = shadow
            let cache = model.makeCache()
            var logits = try model.forward([SequenceInput(cache: cache, tokens: [3, 14, 15, 9], allLogits: true)])
            #expect(pairs.shadowRuns.isEmpty, "a prompt chunk runs no shadow")
            for token in [2, 6, 5] { logits += try model.forward([SequenceInput(cache: cache, tokens: [token])]) }
            return (pairs, logits)
        }
        let moeLayers = try shadowFixture("qwen3moe-headdim").0.config.moeLayers
        let shadowed = moeLayers.count - 1
        let (early, earlyLogits) = try run(.earlyOnly)
        let (fill, _) = try run(.fill)
        let (both, bothLogits) = try run(.both)
        let (notReading, _) = try run(.earlyOnly, reading: false)
        let (_, plainLogits) = try run(.off, shadow: false)
        // One run per shadowed layer and step (two with `both`).
        #expect(early.shadowRuns.count == 3 * shadowed)
        #expect(fill.shadowRuns.count == 3 * shadowed)
        #expect(both.shadowRuns.count == 2 * 3 * shadowed)
        #expect(notReading.shadowRuns.isEmpty, "a layer whose experts are all in memory runs no early shadow")
        for (e, f) in zip(early.shadowRuns, fill.shadowRuns) {
            #expect(e.layer == f.layer)
            #expect(e.routes.map(\.experts) == f.routes.map(\.experts), "layer \(e.layer)")
            for (a, b) in zip(e.routes, f.routes) { for (x, y) in zip(a.weights, b.weights) { #expect(abs(x - y) < 1e-5) } }
        }
        // `both`: the early run, then the filled-in one, per layer; same routes (nothing was resident).
        for pair in stride(from: 0, to: both.shadowRuns.count, by: 2) {
            #expect(both.shadowRuns[pair].layer == both.shadowRuns[pair + 1].layer)
            #expect(both.shadowRuns[pair].routes.map(\.experts) == both.shadowRuns[pair + 1].routes.map(\.experts))
        }
        #expect(earlyLogits == plainLogits)
        #expect(bothLogits == plainLogits)
    }
}

/// On the trained demo model with its fitted surrogates (`DemoModel/expert-surrogates.safetensors`,
/// from scripts/fit_expert_surrogates.py), the shadow run before any expert (every chosen expert's
/// surrogate) chooses the next layer's experts far better than one on h_mid alone, over 200 tokens
/// sampled at temperature 1 (what bench decode runs). Offline, on the same kind of text: 0.931
/// against 0.870 (scripts/shadow_routing_probe.py --surrogates 16000 --random-prompts).
@Suite struct EarlyShadowOnTheDemoTests {
    static func agreement(_ mode: SurrogateShadow) throws -> Double {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let store = try ExpertStore(url: root.appendingPathComponent("DemoModel"))
        let provider = ShadowReportingProvider(StoreExpertProvider(store: store))
        provider.reportEverything = false // nothing resident: the shadow sees no expert's real output
        let model = try TransformerModel(config: store.config, weights: store, experts: provider)
        model.expertSurrogates = try ExpertSurrogates.load(root.appendingPathComponent("DemoModel/\(ExpertSurrogates.fileName)"), config: store.config)
        model.surrogateShadow = mode
        let pairs = RoutingPairs()
        model.routingObserver = pairs
        model.shadowRouting = true
        let cache = model.makeCache()
        var logits = try model.forward([SequenceInput(cache: cache, tokens: [5, 100, 200, 300, 17, 42, 99, 1000])])
        var agree = 0, total = 0
        var state: UInt64 = 12345
        for _ in 0..<200 {
            // Sampled at temperature 1, seeded.
            let row = logits[0]
            let top = row.max()!
            let weights = row.map { expf($0 - top) }
            state = state &* 6364136223846793005 &+ 1442695040888963407
            var target = Float(state >> 40) / Float(1 << 24) * weights.reduce(0, +)
            var token = weights.count - 1
            for (i, w) in weights.enumerated() { target -= w; if target <= 0 { token = i; break } }
            pairs.shadowRuns = []; pairs.real = [:]
            logits = try model.forward([SequenceInput(cache: cache, tokens: [token])])
            for run in pairs.shadowRuns {
                let real = Set(try #require(pairs.real[run.layer])[0].experts)
                agree += Set(run.routes[0].experts).intersection(real).count
                total += real.count
            }
        }
        #expect(total == 200 * 7 * 4, "one shadow per decode step and layer after the first")
        return Double(agree) / Double(total)
    }

    @Test func theEarlyShadowOnSurrogatesAgreesWithTheNextLayer() throws {
        let early = try Self.agreement(.earlyOnly)
        let hMidAlone = try Self.agreement(.off)
        #expect(early > 0.9, "early shadow on the surrogates: \(early)")
        #expect(early > hMidAlone + 0.03, "early shadow \(early) against h_mid alone \(hMidAlone)")
    }
}
