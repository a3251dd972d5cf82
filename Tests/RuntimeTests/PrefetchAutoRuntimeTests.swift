import ExpertCache
import ExpertPrediction
import Foundation
import InferenceEngine
import ModelFormats
import MoEModels
import Runtime
import Testing

/// `--prefetch auto` on the demo model through the engine: the switch in front of the
/// predictor, fed step times by a clock the test controls, turns prefetching and the shadow
/// off and on as its duel decides, and what is generated does not change.
@Suite(.serialized) struct PrefetchAutoRuntimeTests {
    static let demo = RuntimeTests.demo

    /// What the predictor's chain saw at the start of each step.
    final class StepLog: RoutingObserver, @unchecked Sendable {
        struct Entry { var running: PrefetchDuel.Arm; var predictorSteps: Int; var prefetches: Int; var shadow: Bool; var decode: Bool }
        var entries: [Entry] = []
        weak var toggle: PrefetchSwitch?
        weak var model: TransformerModel?
        var cache: OffloadingExpertCache?
        func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) {}
        func willRunStep(lastRows: [Int]) {
            guard let toggle, let model, let cache else { return }
            entries.append(Entry(running: toggle.summary.running, predictorSteps: toggle.predictor.statistics.steps,
                                 prefetches: cache.statistics().total.prefetchesIssued, shadow: model.shadowRouting,
                                 decode: lastRows.last == lastRows.count - 1))
        }
    }

    /// A clock whose steps take 12 ms with prefetching on and 10 ms off (a disk where prefetch costs).
    final class SteppedClock: @unchecked Sendable {
        var now: UInt64 = 0
        weak var toggle: PrefetchSwitch?
        func read() -> UInt64 {
            now += toggle?.summary.running == .on ? 12_000_000 : 10_000_000
            return now
        }
    }

    static func specification(_ prefetch: PrefetchMode) -> RuntimeSpecification {
        var spec = RuntimeSpecification(model: demo)
        spec.memoryBudgetBytes = ProcessMemory.runtimeReservation() + (64 << 20)
        spec.expertCacheBytes = 6 << 20 // a quarter of the demo's experts: misses, guesses
        spec.prefetch = prefetch
        return spec
    }

    @Test func autoPutsASwitchInFrontOfThePredictorOnlyWhenExpertsAreRead() throws {
        let runtime = try ModelRuntime.open(Self.specification(.auto))
        defer { runtime.close() }
        let toggle = try #require(runtime.prefetchSwitch)
        #expect(runtime.model.routingObserver === toggle)
        #expect(toggle.predictor === runtime.predictor)
        // The duel starts with a round whose first block prefetches, shadow included.
        let start = toggle.summary
        #expect(start.leader == .on && start.running == .on && start.rounds == 0 && start.stepsOn + start.stepsOff == 0)
        #expect(start.lastMedianRatio == nil)
        #expect(runtime.model.shadowRouting)

        var everyExpert = Self.specification(.auto)
        everyExpert.expertCacheBytes = 1 << 30
        let resident = try ModelRuntime.open(everyExpert)
        defer { resident.close() }
        #expect(resident.prefetchSwitch == nil && resident.predictor == nil)
        let on = try ModelRuntime.open(Self.specification(.on))
        defer { on.close() }
        #expect(on.prefetchSwitch == nil && on.model.routingObserver === on.predictor)
    }

    @Test func theSlowerArmLosesAndPausedStepsNeitherPredictNorShadow() throws {
        let prompt = [1, 2, 3, 4, 5]
        // 119 decode steps: one round (64 steps, 0.704 s) and part of the leader's first run
        // alone (twice the round: about 141 steps of 10 ms).
        let steps = 120
        let reference = try ModelRuntime.open(Self.specification(.off))
        let expected = try RuntimeTests.generate(reference, prompt: prompt, maxTokens: steps)
        reference.close()

        let runtime = try ModelRuntime.open(Self.specification(.on))
        defer { runtime.close() }
        let predictor = try #require(runtime.predictor)
        let clock = SteppedClock()
        let model = runtime.model
        // Blocks of 8 steps whatever their time, so that one round is 64 decode steps.
        var settings = PrefetchDuel.Settings()
        settings.minBlockSeconds = 0
        settings.warmupSeconds = 0
        let toggle = PrefetchSwitch(predictor: predictor, duel: PrefetchDuel(settings: settings), shadowRouting: true,
                                    setShadowRouting: { [weak model] in model?.shadowRouting = $0 }, clock: { clock.read() })
        clock.toggle = toggle
        model.routingObserver = toggle
        let log = StepLog()
        log.toggle = toggle
        log.model = model
        log.cache = runtime.cache
        runtime.chain(log)

        #expect(try RuntimeTests.generate(runtime, prompt: prompt, maxTokens: steps) == expected)

        // One round (64 decode steps, half of them each way) found prefetching 20% slower;
        // off then leads for the rest.
        let summary = toggle.summary
        let round = PrefetchDuel.Settings()
        #expect(summary.rounds == 1)
        #expect(summary.leader == .off, "\(summary)")
        #expect(summary.lastMedianRatio.map { abs($0 - 1.2) < 1e-9 } == true)
        #expect(summary.stepsOn == round.pairsPerRound * round.blockSteps)
        #expect(summary.stepsOn + summary.stepsOff == steps - 1) // the prefill step gives the first token
        // Every step the chain saw: with prefetching off, the shadow is off and neither the
        // predictor nor the cache moved by the next step.
        #expect(log.entries.count == steps)
        #expect(log.entries.filter(\.decode).count == steps - 1)
        for (entry, next) in zip(log.entries, log.entries.dropFirst()) {
            #expect(entry.shadow == (entry.running == .on))
            if entry.running == .off {
                #expect(next.predictorSteps == entry.predictorSteps)
                #expect(next.prefetches == entry.prefetches)
            } else {
                #expect(next.predictorSteps == entry.predictorSteps + 1)
            }
        }
        #expect(log.entries.last?.running == .off)
        #expect(log.entries.contains { $0.running == .on && $0.decode })
    }
}
