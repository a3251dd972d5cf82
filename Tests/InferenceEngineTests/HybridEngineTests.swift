import Foundation
import Testing
import ModelFormats
import MoEModels
@testable import InferenceEngine

/// The engine on Qwen3-Next (gated delta-net layers beside full attention): prompts cut into
/// the scheduler's prefill chunks and batched with other sequences decode as each does alone,
/// a sequence's fixed linear-attention state is reserved with its KV positions, and
/// cancelling frees both.
@Suite(.serialized) struct HybridEngineTests {
    @Test func batchedChunkedSequencesProduceTheGreedyTokensOfEachAlone() throws {
        let (model, _) = try Fixtures.model("qwen3next")
        let vocab = model.config.vocabSize
        // Longer than one 64-token chunk of the delta rule and cut by a 23-token step budget.
        let prompts = (0..<4).map { i in (0..<(20 + i * 25)).map { ($0 * 7 + i * 13) % vocab } }
        let alone: [[Int]] = try prompts.map { try Generator(model: model).generate(prompt: $0, maxTokens: 6, stopTokens: []).tokens }
        let engine = Engine(model: model, limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: 64 << 20, tokenBudgetPerStep: 23),
                            decode: toyDecode)
        engine.start()
        defer { engine.shutdown(grace: 1) }
        let collectors = prompts.map { _ in EventCollector() }
        for (prompt, collector) in zip(prompts, collectors) {
            _ = try engine.submit(greedy(prompt, maxTokens: 6)) { collector.handle($0) }
        }
        for (expected, collector) in zip(alone, collectors) {
            let result = collector.wait()
            #expect(result.tokens == expected)
            #expect(result.finish == .length)
        }
    }

    @Test func theLinearStateIsReservedWithTheSequenceAndFreedOnCancel() throws {
        let (model, _) = try Fixtures.model("qwen3next")
        #expect(model.sequenceStateBytes > 0)
        let limits = Engine.defaultLimits(for: model, kvCacheBudgetBytes: 64 << 20)
        #expect(limits.sequenceStateBytes == model.sequenceStateBytes)
        #expect(Scheduler(limits: limits).reservation(promptTokens: 3, maxTokens: 100)
                == 103 * model.kvBytesPerToken + model.sequenceStateBytes)

        let reachedSecondToken = DispatchSemaphore(value: 0), cancelled = DispatchSemaphore(value: 0)
        let decodeCalls = Counter()
        let engine = Engine(model: model, limits: limits, decode: { ids in
            if decodeCalls.increment() == 2 {
                reachedSecondToken.signal()
                _ = cancelled.wait(timeout: .now() + 10)
            }
            return toyDecode(ids)
        })
        engine.start()
        defer { engine.shutdown(grace: 1) }
        let collector = EventCollector()
        let id = try engine.submit(greedy([1, 2, 3], maxTokens: 100)) { collector.handle($0) }
        reachedSecondToken.wait()
        #expect(engine.reservedKVBytes == 103 * model.kvBytesPerToken + model.sequenceStateBytes)
        engine.cancel(id)
        cancelled.signal()
        let result = collector.wait()
        #expect(result.finish == .cancelled)
        #expect(engine.reservedKVBytes == 0)
        #expect(engine.currentStatistics.runningSequences == 0)
    }

    /// The memory plan wants every sequence's fixed state beside its positions in the KV share.
    @Test func theMemoryPlanCountsTheFixedState() throws {
        let plan = try MemoryPlan.plan(budget: 1 << 30, denseBytes: 1 << 20, scratchBytes: 1 << 20, kvBytesPerToken: 1024,
                                       kvTokens: 1000, minimumExpertBytes: 1 << 20, sequenceStateBytes: 4 << 20)
        #expect(plan.kvCacheBytes == 1024 * 1000 + (4 << 20))
        #expect(plan.runtimeBytes + plan.denseBytes + plan.scratchBytes + plan.kvCacheBytes + plan.expertCacheBytes == plan.budgetBytes)
    }
}
