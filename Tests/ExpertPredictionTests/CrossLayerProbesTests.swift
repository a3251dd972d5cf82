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
    /// Writes probes with zero weights and a bias that singles out `preferred` experts.
    func writeProbes(_ pairs: [(source: Int, target: Int, preferred: [Int])], experts: Int, hidden: Int,
                     shape: [Int]? = nil) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("probes-\(UUID().uuidString).safetensors")
        var tensors: [SafetensorsStreamWriter.Tensor] = []
        for pair in pairs {
            tensors.append(.init(name: "probe.\(pair.target).from.\(pair.source).weight", dtype: .f32, shape: shape ?? [experts, hidden]))
            tensors.append(.init(name: "probe.\(pair.target).from.\(pair.source).bias", dtype: .f32, shape: [experts]))
        }
        let writer = try SafetensorsStreamWriter(url: url, tensors: tensors)
        for (pair, tensor) in zip(pairs.flatMap { [$0, $0] }, tensors) {
            var values = [Float](repeating: 0, count: tensor.shape.reduce(1, *))
            if tensor.name.hasSuffix(".bias") { for e in pair.preferred { values[e] = 20 } }
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
