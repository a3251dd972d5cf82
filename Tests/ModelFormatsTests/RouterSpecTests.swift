import Foundation
import Testing
@testable import ModelFormats

/// Routing rules as data, on hand-computed cases.
@Suite struct RouterSpecTests {
    func route(_ spec: RouterSpec, _ logits: [Float]) -> TokenRouting {
        var values = logits
        return values.withUnsafeMutableBufferPointer { spec.route($0.baseAddress!, count: $0.count) }
    }

    @Test func correctionBiasChoosesButDoesNotWeigh() {
        // sigmoid(0) = 0.5 for every expert: the bias alone decides, the weights stay 0.5 each.
        let spec = RouterSpec(scoring: .sigmoid, topK: 2, renormalize: false, correctionBias: [0, 0.3, -0.2, 0.1])
        let routing = route(spec, [0, 0, 0, 0])
        #expect(routing.experts == [1, 3])
        #expect(routing.weights == [0.5, 0.5])
    }

    @Test func renormalisationThenScaling() {
        let spec = RouterSpec(scoring: .sigmoid, topK: 2, renormalize: true, scalingFactor: 2.5)
        let routing = route(spec, [2, -1, 1, -3])
        #expect(routing.experts == [0, 2])
        let a = 1 / (1 + expf(-2)), b = 1 / (1 + expf(-1))
        #expect(abs(routing.weights[0] - 2.5 * a / (a + b)) < 1e-6 && abs(routing.weights[1] - 2.5 * b / (a + b)) < 1e-6)
    }

    @Test func groupsScoredByTheirTwoBestExperts() {
        // Groups {0,1} {2,3} {4,5}: two-best sums 0.9+0.0=0.9, 0.5+0.5=1.0, 0.6+0.35=0.95 → keep groups 1 and 2,
        // so expert 0 (the single best score) is not eligible.
        let scores: [Float] = [0.9, 0.0, 0.5, 0.5, 0.6, 0.35]
        let spec = RouterSpec(scoring: .sigmoid, topK: 2, renormalize: false,
                              groups: .init(groupCount: 3, selectedGroups: 2, groupScore: .topTwoSum))
        let chosen = scores.withUnsafeBufferPointer { spec.select($0.baseAddress!, count: 6, k: 2) }
        #expect(chosen == [4, 2])
        // With the max rule (DeepSeek-V2) group 0 (best 0.9) and group 2 (best 0.6) stay.
        let v2 = RouterSpec(scoring: .softmax, topK: 2, renormalize: false,
                            groups: .init(groupCount: 3, selectedGroups: 2, groupScore: .max))
        #expect(scores.withUnsafeBufferPointer { v2.select($0.baseAddress!, count: 6, k: 2) } == [0, 4])
    }

    @Test func plainSoftmaxUnchanged() {
        let spec = RouterSpec(scoring: .softmax, topK: 1, renormalize: true)
        let routing = route(spec, [0.1, 3, 0.2])
        #expect(routing.experts == [1] && routing.weights == [1])
    }
}
