@testable import MoEModels
import Testing

/// The skip step of `--skip-missing-below` on its own: which experts go, how the rest are
/// rescaled, and what is counted.
@Suite struct WeakExpertSkippingTests {
    private func route(_ experts: [Int], _ weights: [Float]) -> TokenRouting { TokenRouting(experts: experts, weights: weights) }

    @Test func skipsOnlyWeakMissingExpertsAndRenormalises() {
        // Expert 7 is missing and weak (0.1 < 0.15): skipped. Expert 5 is weak but resident: kept.
        // Expert 3 is missing but strong: kept (it will be read).
        var routes = [route([3, 5, 7, 9], [0.5, 0.1, 0.1, 0.3])]
        let resident: Set<Int> = [5, 9]
        let skipped = WeakExpertSkipping.apply(&routes, threshold: 0.15) { resident.contains($0) }
        #expect(skipped == .init(tokens: 1, experts: 1))
        #expect(routes[0].experts == [3, 5, 9])
        #expect(abs(routes[0].weights.reduce(0, +) - 1) < 1e-6)
        #expect(abs(routes[0].weights[0] - 0.5 / 0.9) < 1e-6 && abs(routes[0].weights[2] - 0.3 / 0.9) < 1e-6)
    }

    @Test func keepsTheRowTotalWhenNotNormalised() {
        // Architectures without top-k renormalisation keep the row's original total.
        var routes = [route([1, 2], [0.4, 0.05])]
        _ = WeakExpertSkipping.apply(&routes, threshold: 0.1) { _ in false }
        #expect(routes[0].experts == [1] && abs(routes[0].weights[0] - 0.45) < 1e-6)
    }

    @Test func neverSkipsARowsFirstExpert() {
        var routes = [route([4, 6], [0.05, 0.04])]
        let skipped = WeakExpertSkipping.apply(&routes, threshold: 0.5) { _ in false }
        #expect(routes[0].experts == [4] && abs(routes[0].weights[0] - 0.09) < 1e-6)
        #expect(skipped == .init(tokens: 1, experts: 1))
    }

    @Test func thresholdZeroOrEverythingResidentChangesNothing() {
        let original = [route([0, 1, 2, 3], [0.4, 0.3, 0.2, 0.1]), route([4, 5, 6, 7], [0.7, 0.1, 0.1, 0.1])]
        var routes = original
        #expect(WeakExpertSkipping.apply(&routes, threshold: 0) { _ in false } == .init())
        #expect(routes == original)
        #expect(WeakExpertSkipping.apply(&routes, threshold: 1) { _ in true } == .init())
        #expect(routes == original)
    }

    @Test func asksResidencyOncePerExpertAndCountsTokens() {
        var routes = [route([0, 9], [0.9, 0.1]), route([1, 9], [0.8, 0.2]), route([2, 8], [0.95, 0.05])]
        var asked: [Int] = []
        let skipped = WeakExpertSkipping.apply(&routes, threshold: 0.25) { asked.append($0); return $0 == 8 }
        #expect(asked.sorted() == [8, 9])
        #expect(skipped == .init(tokens: 2, experts: 2))
        #expect(routes.map(\.experts) == [[0], [1], [2, 8]])
    }
}
