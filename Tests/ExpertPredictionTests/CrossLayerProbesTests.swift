import Foundation
import Testing
import ModelFormats
import MoEModels
@testable import ExpertPrediction

/// Hints per layer, in order.
private final class LayerHints: ExpertProvider, @unchecked Sendable {
    let inner: ExpertProvider
    var hints: [Int: [[Int]]] = [:]
    init(_ inner: ExpertProvider) { self.inner = inner }
    func withExperts(layer: Int, experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        try inner.withExperts(layer: layer, experts: experts, body)
    }
    func prefetch(layer: Int, experts: [Int], pipeline: Bool) { hints[layer, default: []].append(experts) }
    var cancelled: [Int: [[Int]]] = [:]
    func cancelPrefetches(layer: Int?, experts: [Int]?) -> Int {
        if let layer, let experts { cancelled[layer, default: []].append(experts) }
        return 0
    }
}

/// A fixture model whose expert provider records the prefetch hints.
private func hintedFixtureModel(_ prefix: String) throws -> (LayerHints, TransformerModel) {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/models")
    let name = try #require(try FileManager.default.contentsOfDirectory(atPath: root.path).sorted().first { $0.hasPrefix(prefix) })
    let checkpoint = try CheckpointDirectory(url: root.appendingPathComponent(name))
    let hints = LayerHints(try InMemoryExpertProvider(config: checkpoint.config, weights: checkpoint,
                                                      names: ArchitectureDescription.of(checkpoint.config.architecture)))
    return (hints, try TransformerModel(config: checkpoint.config, weights: checkpoint, experts: hints))
}

@Suite struct CrossLayerProbesTests {
    /// Writes probes (`prefixes[i]` names pair i's kind, `probe` by default) with zero weights and
    /// a bias of `preferredBias` for the `preferred` experts and `otherBias` for the rest.
    func writeProbes(_ pairs: [(source: Int, target: Int, preferred: [Int])], experts: Int, hidden: Int,
                     shape: [Int]? = nil, prefixes: [String]? = nil, preferredBias: Float = 20, otherBias: Float = 0) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("probes-\(UUID().uuidString).safetensors")
        var tensors: [SafetensorsStreamWriter.Tensor] = []
        for (i, pair) in pairs.enumerated() {
            let prefix = prefixes?[i] ?? "probe"
            tensors.append(.init(name: "\(prefix).\(pair.target).from.\(pair.source).weight", dtype: .f32, shape: shape ?? [experts, hidden]))
            tensors.append(.init(name: "\(prefix).\(pair.target).from.\(pair.source).bias", dtype: .f32, shape: [experts]))
        }
        let writer = try SafetensorsStreamWriter(url: url, tensors: tensors)
        for (pair, tensor) in zip(pairs.flatMap { [$0, $0] }, tensors) {
            var values = [Float](repeating: 0, count: tensor.shape.reduce(1, *))
            if tensor.name.hasSuffix(".bias") {
                values = [Float](repeating: otherBias, count: values.count)
                for e in pair.preferred { values[e] = preferredBias }
            }
            try values.withUnsafeBytes { try writer.append($0) }
        }
        try writer.finish()
        return url
    }

    /// Where a probe exists it replaces the target's router in the cross-layer gate: its
    /// (bias-only) choice is what gets prefetched, whatever the hidden state.
    @Test func aProbeReplacesTheTargetRouterInTheCrossLayerGate() throws {
        let (hints, probed) = try hintedFixtureModel("mixtral-top1-tied")
        let config = probed.config
        try #require(config.layerCount >= 2 && config.expertCount >= 2)
        let preferred = [config.expertCount - 1]
        let url = try writeProbes([(0, 1, preferred)], experts: config.expertCount, hidden: config.hiddenSize)
        defer { try? FileManager.default.removeItem(at: url) }
        let probes = try CrossLayerProbes.load(url, experts: config.expertCount, hidden: config.hiddenSize)
        #expect(probes.count == 1 && probes.probe(from: 0, to: 1) != nil && probes.probe(from: 1, to: 2) == nil)

        let predictor = ExpertPredictor(model: probed, configuration: PredictorConfiguration(crossLayer: true), provider: hints, probes: probes)
        probed.routingObserver = predictor
        for token in [1, 2, 3] { _ = try probed.forward([SequenceInput(cache: probed.makeCache(), tokens: [token])]) }
        #expect(hints.hints[1] == Array(repeating: preferred, count: 3))
        // Layers without a probe keep the router's guesses.
        if config.layerCount > 2 { #expect(hints.hints[2]?.isEmpty == false) }
    }

    /// Selection probes give each expert an independent probability of being used; a decode
    /// step prefetches exactly those at or above `minSelectionProbability` (here the two
    /// preferred experts at sigmoid(1) = 0.73, the rest at sigmoid(-4) = 0.02), whatever the
    /// router's softmax would say.
    @Test func selectionProbesPrefetchWhatIsLikelyEnoughToBeUsed() throws {
        let (hints, probed) = try hintedFixtureModel("qwen3moe-headdim")
        let config = probed.config
        try #require(config.layerCount >= 2 && config.expertCount >= 4 && config.moeLayers.starts(with: [0, 1]))
        let preferred = [0, config.expertCount - 1]
        let url = try writeProbes([(0, 1, preferred)], experts: config.expertCount, hidden: config.hiddenSize,
                                  prefixes: ["select"], preferredBias: 1, otherBias: -4)
        defer { try? FileManager.default.removeItem(at: url) }
        let probes = try CrossLayerProbes.load(url, experts: config.expertCount, hidden: config.hiddenSize)
        #expect(probes.output == .selection && probes.probe(from: 0, to: 1)?.output == .selection)

        for (floor, expected) in [(Float(0.5), preferred), (0.8, nil)] {
            hints.hints = [:]
            let configuration = PredictorConfiguration(crossLayer: true, extraWidth: config.expertCount, minSelectionProbability: floor)
            probed.routingObserver = ExpertPredictor(model: probed, configuration: configuration, provider: hints, probes: probes)
            for token in [1, 2] { _ = try probed.forward([SequenceInput(cache: probed.makeCache(), tokens: [token])]) }
            #expect(hints.hints[1] == expected.map { Array(repeating: $0, count: 2) }, "floor \(floor)")
        }
    }

    /// Looking two layers ahead, the nearer layer's guess for a layer replaces the farther one's
    /// at a decode step: what it does not repeat is withdrawn and its read cancelled.
    @Test func theNearestLayersGuessWithdrawsEarlierOnes() throws {
        let (hints, probed) = try hintedFixtureModel("mixtral-top1-tied")
        let config = probed.config
        try #require(config.moeLayers.starts(with: [0, 1, 2]) && config.expertCount >= 4)
        // Two layers ahead (2 ← 0) guesses expert 0; one ahead (2 ← 1) guesses expert 3.
        let url = try writeProbes([(0, 1, [1]), (0, 2, [0]), (1, 2, [3])], experts: config.expertCount, hidden: config.hiddenSize,
                                  prefixes: ["select", "select", "select"], otherBias: -20)
        defer { try? FileManager.default.removeItem(at: url) }
        let probes = try CrossLayerProbes.load(url, experts: config.expertCount, hidden: config.hiddenSize)
        let predictor = ExpertPredictor(model: probed, configuration: PredictorConfiguration(crossLayer: true, depth: 2),
                                        provider: hints, probes: probes)
        probed.routingObserver = predictor
        _ = try probed.forward([SequenceInput(cache: probed.makeCache(), tokens: [5])])
        #expect(hints.hints[2] == [[0], [3]])
        // First the withdrawal; then, once layer 2 routes, whatever of its guess it did not use.
        #expect(hints.cancelled[2]?.first == [0])
        #expect(predictor.statistics.perLayer[2].withdrawn == 1 && predictor.statistics.perLayer[2].predicted == 1)
        // A prefill chunk (more rows than a decode step) keeps both: its pipeline wants the union.
        hints.hints = [:]
        hints.cancelled = [:]
        _ = try probed.forward([SequenceInput(cache: probed.makeCache(), tokens: Array(1...(ExpertPredictor.confidentRowLimit + 1)))])
        #expect(hints.hints[2] == [[0], [3]] && predictor.statistics.perLayer[2].withdrawn == 1)

        // With `deepRowLimit` 1 a decode step of two sequences looks one layer ahead only.
        hints.hints = [:]
        let batched = ExpertPredictor(model: probed, configuration: PredictorConfiguration(crossLayer: true, depth: 2, deepRowLimit: 1),
                                      provider: hints, probes: probes)
        probed.routingObserver = batched
        _ = try probed.forward([SequenceInput(cache: probed.makeCache(), tokens: [5]), SequenceInput(cache: probed.makeCache(), tokens: [6])])
        #expect(hints.hints[2] == [[3]])
        _ = try probed.forward([SequenceInput(cache: probed.makeCache(), tokens: [5])])
        #expect(hints.hints[2] == [[3], [0], [3]])
    }

    /// A map from the last MoE layer to the first (target before source) guesses the next
    /// step's first layer: at decode steps only, whose rows are each a sequence's last token.
    @Test func pastTheLastLayerTheGateGuessesTheNextStepsFirstLayer() throws {
        let (hints, probed) = try hintedFixtureModel("mixtral-top1-tied")
        let config = probed.config
        let last = try #require(config.moeLayers.last)
        try #require(config.moeLayers.first == 0 && last > 0 && config.expertCount >= 3)
        let url = try writeProbes([(last, 0, [2])], experts: config.expertCount, hidden: config.hiddenSize,
                                  prefixes: ["select"], otherBias: -20)
        defer { try? FileManager.default.removeItem(at: url) }
        let probes = try CrossLayerProbes.load(url, experts: config.expertCount, hidden: config.hiddenSize)
        let predictor = ExpertPredictor(model: probed, configuration: PredictorConfiguration(crossLayer: true), provider: hints, probes: probes)
        probed.routingObserver = predictor

        // A prompt chunk: its next step is not one token per sequence, so no guess.
        let caches = [probed.makeCache(), probed.makeCache()]
        _ = try probed.forward([SequenceInput(cache: caches[0], tokens: [3, 4, 5])])
        #expect(hints.hints[0] == nil)
        // Decode steps, one and two sequences: the guess for the next step's layer 0.
        _ = try probed.forward([SequenceInput(cache: caches[0], tokens: [6])])
        #expect(hints.hints[0] == [[2]])
        _ = try probed.forward([SequenceInput(cache: caches[0], tokens: [7]), SequenceInput(cache: caches[1], tokens: [8])])
        #expect(hints.hints[0] == [[2], [2]])
        // The next step scores it against what layer 0 then chose.
        #expect(predictor.statistics.perLayer[0].predicted == 1)
    }

    /// `cross_layer_deep3` guesses three MoE layers ahead: on a three-layer model, layer 0's
    /// gate input reaches the next step's layer 0 through its fitted map (0 ← 0), which two
    /// layers ahead does not reach.
    @Test func threeLayersAheadReachTheNextStepFromTheFirstLayer() throws {
        let deep3 = try #require(PredictorConfiguration.named.first { $0.0 == "cross_layer_deep3" }?.1)
        #expect(deep3.crossLayer && deep3.depth == 3 && deep3.deepRowLimit == 1)
        let (hints, probed) = try hintedFixtureModel("mixtral-top1-tied")
        let config = probed.config
        try #require(config.moeLayers == [0, 1, 2] && config.expertCount >= 3)
        let url = try writeProbes([(0, 0, [2])], experts: config.expertCount, hidden: config.hiddenSize,
                                  prefixes: ["select"], otherBias: -20)
        defer { try? FileManager.default.removeItem(at: url) }
        let probes = try CrossLayerProbes.load(url, experts: config.expertCount, hidden: config.hiddenSize)
        for (depth, expected) in [(2, nil), (3, [[2]] as [[Int]]?)] {
            hints.hints = [:]
            probed.routingObserver = ExpertPredictor(model: probed, configuration: PredictorConfiguration(crossLayer: true, depth: depth),
                                                     provider: hints, probes: probes)
            let cache = probed.makeCache()
            _ = try probed.forward([SequenceInput(cache: cache, tokens: [3, 4])])
            hints.hints = [:]
            _ = try probed.forward([SequenceInput(cache: cache, tokens: [6])])
            #expect(hints.hints[0] == expected, "depth \(depth)")
        }
    }

    /// A probe with a hidden layer computes `W2 · silu(W1 · x + b1) + b2`; the output layer
    /// must read as many units as the hidden layer has.
    @Test func aHiddenLayerProbeComputesThroughSiLU() throws {
        let (experts, hidden) = (4, 3)
        func write(outputColumns: Int) throws -> URL {
            let url = FileManager.default.temporaryDirectory.appendingPathComponent("probes-\(UUID().uuidString).safetensors")
            let tensors: [(SafetensorsStreamWriter.Tensor, [Float])] = [
                (.init(name: "select.1.from.0.hidden.weight", dtype: .f32, shape: [2, hidden]), [1, 0, 0, -1, 0, 0]),
                (.init(name: "select.1.from.0.hidden.bias", dtype: .f32, shape: [2]), [1, 0]),
                (.init(name: "select.1.from.0.weight", dtype: .f32, shape: [experts, outputColumns]),
                 (0..<(experts * outputColumns)).map { $0 == 0 || $0 == outputColumns + 1 ? 1 : 0 }),
                (.init(name: "select.1.from.0.bias", dtype: .f32, shape: [experts]), [0, 0, 0.5, 0]),
            ]
            let writer = try SafetensorsStreamWriter(url: url, tensors: tensors.map(\.0))
            for (_, values) in tensors { try values.withUnsafeBytes { try writer.append($0) } }
            try writer.finish()
            return url
        }
        let url = try write(outputColumns: 2)
        defer { try? FileManager.default.removeItem(at: url) }
        let probe = try #require(try CrossLayerProbes.load(url, experts: experts, hidden: hidden).probe(from: 0, to: 1))
        let input: [Float] = [2, 7, -7]
        var scores = [Float](repeating: .nan, count: experts)
        probe.apply(input, rowCount: 1, into: &scores)
        let silu = { (v: Float) in v / (1 + expf(-v)) }
        let expected: [Float] = [silu(3), silu(-2), 0.5, 0]
        #expect(zip(scores, expected).allSatisfy { abs($0 - $1) < 1e-5 }, "\(scores) vs \(expected)")
        // With caller-provided scratch for the hidden activations: the same scores.
        var scratch = [Float](repeating: .nan, count: probe.hiddenUnits)
        var reused = [Float](repeating: .nan, count: experts)
        probe.apply(input, rowCount: 1, into: &reused, scratch: &scratch)
        #expect(probe.hiddenUnits == 2 && reused == scores)

        let mismatched = try write(outputColumns: hidden)
        defer { try? FileManager.default.removeItem(at: mismatched) }
        #expect {
            try CrossLayerProbes.load(mismatched, experts: experts, hidden: hidden)
        } throws: { error in
            "\(error)".contains("select.1.from.0.weight") && "\(error)".contains("[4, 2]")
        }
    }

    @Test func aFileMixingKindsIsRefused() throws {
        let url = try writeProbes([(0, 1, [0]), (1, 2, [0])], experts: 4, hidden: 8, prefixes: ["select", "probe"])
        defer { try? FileManager.default.removeItem(at: url) }
        #expect {
            try CrossLayerProbes.load(url, experts: 4, hidden: 8)
        } throws: { error in
            "\(error)".contains(url.path) && "\(error)".contains("one kind")
        }
    }

    @Test func badShapesAndNamesAreRefusedWithTheFileAndTensor() throws {
        let url = try writeProbes([(0, 1, [0])], experts: 4, hidden: 8, shape: [4, 7])
        defer { try? FileManager.default.removeItem(at: url) }
        #expect {
            try CrossLayerProbes.load(url, experts: 4, hidden: 8)
        } throws: { error in
            "\(error)".contains(url.path) && "\(error)".contains("probe.1.from.0.weight") && "\(error)".contains("[4, 8]")
        }
    }
}
