import Foundation
import Testing
import ModelFormats
import MoEModels
import TensorMath
@testable import ExpertPrediction

/// Captures each MoE layer's routing and gate input.
final class GateCapture: RoutingObserver, @unchecked Sendable {
    var captured: [(layer: Int, routes: [TokenRouting], input: [Float])] = []
    let hidden: Int
    init(hidden: Int) { self.hidden = hidden }
    func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) {
        captured.append((layer, routes, Array(UnsafeBufferPointer(start: gateInput, count: rowCount * hidden))))
    }
}

/// The predictor guesses with each layer's own rule (sigmoid scores, correction bias, groups,
/// scaling) — `TransformerModel.routerSpec(forLayer:)` — not with a softmax.
@Suite struct RouterRulePredictionTests {
    /// Each layer's spec, applied to that layer's router and gate input, gives exactly the
    /// routing the MoE block made; the architecture-wide spec (no bias) would not.
    @Test(arguments: ["deepseekv3-qlora-groups-yarn", "glm4moe-partial-qknorm-bias", "minimaxm2-rotarydim", "deepseekv2-qlora-grouped"])
    func perLayerRuleReproducesTheRouting(fixture: String) throws {
        let (model, _) = try fixtureModel(fixture)
        let capture = GateCapture(hidden: model.config.hiddenSize)
        model.routingObserver = capture
        _ = try model.forward([SequenceInput(cache: model.makeCache(), tokens: Array(0..<24).map { ($0 * 37 + 5) % model.config.vocabSize })])
        #expect(capture.captured.count == model.config.moeLayers.count)
        var differsWithoutBias = false
        for (layer, routes, input) in capture.captured {
            let spec = try #require(model.routerSpec(forLayer: layer))
            let router = try #require(model.router(forLayer: layer))
            let experts = router.rows
            var logits = [Float](repeating: 0, count: routes.count * experts)
            router.apply(input, rowCount: routes.count, into: &logits)
            for (row, expected) in routes.enumerated() {
                var scores = Array(logits[(row * experts)..<((row + 1) * experts)]), plain = scores
                let again = scores.withUnsafeMutableBufferPointer { spec.route($0.baseAddress!, count: experts) }
                #expect(again == expected)
                let generic = plain.withUnsafeMutableBufferPointer { model.routerSpec.route($0.baseAddress!, count: experts) }
                if Set(generic.experts) != Set(expected.experts) { differsWithoutBias = true }
            }
            if model.config.architecture != .deepseekV2 { #expect(spec.correctionBias?.count == experts) }
        }
        if model.config.architecture != .deepseekV2 { #expect(differsWithoutBias, "the correction bias never changed a choice") }
    }

    /// Predicting every expert of a grouped sigmoid router still covers every used expert
    /// (experts outside the chosen groups rank last but are there), and never changes the output.
    @Test func groupedSigmoidPredictionCoversTheUsedExperts() throws {
        let (model, _) = try fixtureModel("deepseekv3-qlora-groups-yarn")
        let tokens = [3, 1, 4, 1, 5, 9, 2, 6]
        let plain = try model.forward([SequenceInput(cache: model.makeCache(), tokens: tokens, allLogits: true)])[0]
        let everything = PredictorConfiguration(crossLayer: true, extraWidth: model.config.expertCount, preAttention: true)
        let predictor = ExpertPredictor(model: model, configuration: everything, provider: nil)
        model.routingObserver = predictor
        let predicted = try model.forward([SequenceInput(cache: model.makeCache(), tokens: tokens, allLogits: true)])[0]
        #expect(plain == predicted)
        for layer in model.config.moeLayers {
            #expect(predictor.statistics.perLayer[layer].recall == 1)
        }
    }
}
