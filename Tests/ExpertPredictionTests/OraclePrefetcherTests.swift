import Testing
import MoEModels
@testable import ExpertPrediction

/// Records prefetch hints; never asked for weights.
private final class HintLog: ExpertProvider, @unchecked Sendable {
    var hints: [(layer: Int, experts: [Int])] = []
    func withExperts(layer: Int, experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        Issue.record("the oracle only prefetches")
    }
    func prefetch(layer: Int, experts: [Int], pipeline: Bool) {
        #expect(!pipeline)
        hints.append((layer, experts))
    }
}

@Suite struct OraclePrefetcherTests {
    /// Model layers 0 (dense), 1, 2, 3 (MoE); two recorded decode steps.
    let routing: [[[Int]?]] = [
        [nil, [10, 11], [12, 13], [14, 15]],
        [nil, [20, 21], [22, 23], [24, 25]],
    ]

    func route(_ oracle: OraclePrefetcher, layer: Int, rows: Int) {
        let gate = [Float](repeating: 0, count: rows)
        gate.withUnsafeBufferPointer {
            oracle.didRoute(layer: layer, routes: [],  // the oracle ignores the live routing
                            gateInput: $0.baseAddress!, rowCount: rows)
        }
    }

    /// Two MoE layers ahead: within a step, then wrapping into the next step's first layers,
    /// nothing past the trace's end, and nothing for a prefill chunk.
    @Test func prefetchesWhatTheLayerDepthAheadReallyUsed() {
        let log = HintLog()
        let oracle = OraclePrefetcher(decodeRouting: routing, moeLayers: [1, 2, 3], depth: 2, provider: log)
        for layer in [1, 2, 3] { route(oracle, layer: layer, rows: 5) }   // prefill: not replayed
        #expect(log.hints.isEmpty && oracle.decodeSteps == 0)
        for _ in 0..<2 { for layer in [1, 2, 3] { route(oracle, layer: layer, rows: 1) } }
        #expect(oracle.decodeSteps == 2)
        #expect(log.hints.map(\.layer) == [3, 1, 2, 3])
        #expect(log.hints.map(\.experts) == [[14, 15], [20, 21], [22, 23], [24, 25]])
        #expect(oracle.hintsIssued == 4)
    }

    @Test func oneLayerAheadStaysWithinTheStepUntilItsLastLayer() {
        let log = HintLog()
        let oracle = OraclePrefetcher(decodeRouting: routing, moeLayers: [1, 2, 3], depth: 1, provider: log)
        for layer in [1, 2, 3] { route(oracle, layer: layer, rows: 1) }
        #expect(log.hints.map(\.layer) == [2, 3, 1])
        #expect(log.hints.map(\.experts) == [[12, 13], [14, 15], [20, 21]])
    }
}
