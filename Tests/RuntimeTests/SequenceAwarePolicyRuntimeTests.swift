import ExpertCache
import Foundation
import InferenceEngine
import ModelFormats
import MoEModels
@testable import Runtime
import Testing

/// The sequence-aware policies inside `policy`: itself, or both contenders of the dueling
/// default (`PolicyChoice.sequence`).
func sequenceAwareContenders(_ policy: any CachePolicy) -> [SequenceAwarePolicy] {
    if let duel = policy as? DuelingPolicy<SequenceAwarePolicy, SequenceAwarePolicy> { return [duel.contenders.first, duel.contenders.second] }
    return [policy as! SequenceAwarePolicy]
}

/// The first of them.
func sequenceAware(_ policy: any CachePolicy) -> SequenceAwarePolicy { sequenceAwareContenders(policy)[0] }

/// `--cache-policy sequence` at run time: the engine and the generator tell the expert cache's
/// policy which sequence each token is and when it ends.
@Suite struct SequenceAwarePolicyRuntimeTests {
    /// What the policy says while a request runs.
    final class Seen: @unchecked Sendable {
        private let lock = NSLock()
        private var running: [Int] = []
        private var references: [Int] = []
        func note(_ cache: OffloadingExpertCache, layer: Int) {
            let (sequences, counted) = cache.withPolicy { policy -> (Int, Int) in
                // Both contenders of the dueling default hear the same reports: a disagreement is counted.
                let counts = sequenceAwareContenders(policy).map { ($0.runningSequences, $0.sequenceReferences(layer: layer)) }
                return counts.allSatisfy { $0 == counts[0] } ? counts[0] : (-1, -1)
            }
            lock.lock(); running.append(sequences); references.append(counted); lock.unlock()
        }
        var snapshot: (running: [Int], references: [Int]) { lock.lock(); defer { lock.unlock() }; return (running, references) }
    }

    static func open(_ policy: PolicyChoice) throws -> ModelRuntime {
        var spec = RuntimeSpecification(model: RuntimeTests.demo)
        spec.memoryBudgetBytes = ProcessMemory.runtimeReservation() + (64 << 20)
        spec.expertCacheBytes = 6 << 20   // of the demo's 15 MiB of experts: evictions happen
        spec.maxSequences = 2
        spec.policy = policy
        return try ModelRuntime.open(spec)
    }

    /// Two concurrent requests through the engine: while they run the policy counts both
    /// sequences' routing; once both finished it holds none; the tokens are those of the default
    /// policy (eviction order never changes results).
    @Test func theEngineReportsSequencesToThePolicyAndEndsThem() throws {
        let reference = try Self.open(.learned)
        let prompts = [[1, 42, 7, 300, 5], [9, 8, 77, 1000, 2, 31]]
        let expected = try prompts.map { try RuntimeTests.generate(reference, prompt: $0, maxTokens: 12) }
        reference.close()

        let runtime = try Self.open(.sequence)
        defer { runtime.close() }
        let cache = try #require(runtime.cache)
        #expect(cache.statistics().policy == "sequence")
        let layer = runtime.model.config.moeLayers[0]
        let engine = runtime.makeEngine(decode: { _ in "" })
        engine.start()
        defer { engine.shutdown(grace: 1) }
        var sampling = SamplingParameters()
        sampling.temperature = 0
        let seen = Seen()
        let events = prompts.map { _ in RuntimeTests.Events() }
        for (prompt, sink) in zip(prompts, events) {
            _ = try engine.submit(GenerationRequest(prompt: prompt, maxTokens: 12, sampling: sampling)) { event in
                if case .token = event { seen.note(cache, layer: layer) }
                sink.handle(event)
            }
        }
        for sink in events { #expect(sink.finished.wait(timeout: .now() + 120) == .success) }
        for (sink, tokens) in zip(events, expected) {
            let (got, failure) = sink.result
            #expect(failure == nil)
            #expect(got == tokens)
        }
        let (running, references) = seen.snapshot
        #expect(running.max() == 2)
        #expect(running.allSatisfy { (1...2).contains($0) })
        // At least each prompt's tokens, top-k references each.
        #expect((references.max() ?? 0) >= prompts.map(\.count).reduce(0, +) * runtime.model.config.expertsPerToken)
        #expect(cache.withPolicy { sequenceAware($0).runningSequences } == 0)
        #expect(cache.withPolicy { sequenceAware($0).sequenceReferences(layer: layer) } == 0)
    }

    /// The single-sequence generator (`generate`, `bench decode`) reports its one sequence and ends it.
    @Test func theGeneratorReportsItsSequenceAndEndsIt() throws {
        let runtime = try Self.open(.sequence)
        defer { runtime.close() }
        let cache = try #require(runtime.cache)
        let layer = runtime.model.config.moeLayers[0]
        let seen = Seen()
        let prompt = [1, 42, 7, 300, 5]
        let result = try Generator(model: runtime.model).generate(prompt: prompt, maxTokens: 6, stopTokens: []) { _ in
            seen.note(cache, layer: layer)
        }
        #expect(result.tokens.count == 6)
        let (running, references) = seen.snapshot
        #expect(running == [Int](repeating: 1, count: 6))
        // The prompt's tokens, then one more token per step (the first token comes from the prefill).
        #expect(references.first == prompt.count * runtime.model.config.expertsPerToken)
        #expect(references.last == (prompt.count + 5) * runtime.model.config.expertsPerToken)
        #expect(cache.withPolicy { sequenceAware($0).runningSequences } == 0)
    }
}

/// The feeder ends sequences nobody reported ending once they have been absent long enough.
@Suite struct SequenceRoutingFeederTests {
    @Test func sequencesAbsentForLongAreEnded() throws {
        let runtime = try SequenceAwarePolicyRuntimeTests.open(.sequence)
        defer { runtime.close() }
        let cache = try #require(runtime.cache)
        let feeder = SequenceRoutingFeeder(cache: cache, staleSteps: 3)
        let routes = [TokenRouting(experts: [0, 1], weights: [0.5, 0.5]), TokenRouting(experts: [2, 1], weights: [0.5, 0.5])]
        let input = [Float](repeating: 0, count: 2)
        func running() -> Int { cache.withPolicy { sequenceAware($0).runningSequences } }
        feeder.willRunSequences([SequenceRows(id: 900_001, rows: 0..<1), SequenceRows(id: 900_002, rows: 1..<2)])
        input.withUnsafeBufferPointer { feeder.didRoute(layer: 1, routes: routes, gateInput: $0.baseAddress!, rowCount: 2) }
        #expect(running() == 2)
        #expect(cache.withPolicy { sequenceAware($0).sequenceReferences(layer: 1) } == 4)
        // Sequence 900_002 keeps running alone; 900_001 is absent from then on.
        for step in 1...4 {
            feeder.willRunSequences([SequenceRows(id: 900_002, rows: 0..<1)])
            input.withUnsafeBufferPointer { feeder.didRoute(layer: 1, routes: [routes[1]], gateInput: $0.baseAddress!, rowCount: 1) }
            #expect(running() == (step <= 3 ? 2 : 1), "step \(step)")
        }
        #expect(feeder.trackedSequences == 1)
        feeder.sequenceEnded(900_002)
        #expect(running() == 0 && feeder.trackedSequences == 0)
    }
}
