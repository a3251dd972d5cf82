import Testing
@testable import InferenceEngine
import TensorMath

@Suite struct SchedulerTests {
    /// 10 bytes of KV per token keeps the arithmetic readable.
    func limits(maxRunning: Int = 4, budget: Int = 8, kvBytes: Int = 1000, waiting: Int = 4, context: Int = 64) -> SchedulerLimits {
        SchedulerLimits(maxRunningSequences: maxRunning, tokenBudgetPerStep: budget, kvCacheBudgetBytes: kvBytes,
                        kvBytesPerToken: 10, maxWaitingRequests: waiting, contextLength: context)
    }

    @Test func chunkedPrefillThenDecode() throws {
        var scheduler = Scheduler(limits: limits(budget: 4))
        try scheduler.add(id: 1, prompt: [1, 2, 3, 4, 5, 6], maxTokens: 3)
        let first = scheduler.schedule()
        #expect(first.admitted == [1])
        #expect(first.chunks == [ScheduledChunk(sequenceId: 1, tokens: [1, 2, 3, 4], samplesNextToken: false, isPrompt: true)])
        scheduler.update(plan: first, sampled: [:])
        let second = scheduler.schedule()
        #expect(second.chunks == [ScheduledChunk(sequenceId: 1, tokens: [5, 6], samplesNextToken: true, isPrompt: true)])
        scheduler.update(plan: second, sampled: [1: 42])
        let third = scheduler.schedule()
        #expect(third.chunks == [ScheduledChunk(sequenceId: 1, tokens: [42], samplesNextToken: true, isPrompt: false)])
    }

    @Test func decodesGoFirstAndPromptsFillTheRestOfTheBudget() throws {
        var scheduler = Scheduler(limits: limits(budget: 5))
        try scheduler.add(id: 1, prompt: [1, 2], maxTokens: 4)
        let p1 = scheduler.schedule()
        scheduler.update(plan: p1, sampled: [1: 7])
        try scheduler.add(id: 2, prompt: [9, 9, 9, 9, 9, 9], maxTokens: 2)
        let p2 = scheduler.schedule()
        #expect(p2.admitted == [2])
        #expect(p2.chunks.map(\.sequenceId) == [1, 2])
        #expect(p2.chunks[0].tokens == [7])
        #expect(p2.chunks[1].tokens.count == 4 && !p2.chunks[1].samplesNextToken)
        #expect(p2.tokenCount == 5)
    }

    @Test func admissionIsBoundedByKVReservationAndFreedOnFinish() throws {
        // Each request reserves (prompt 4 + max 6) * 10 = 100 bytes; the budget holds two.
        var scheduler = Scheduler(limits: limits(kvBytes: 250))
        for id in 1...3 { try scheduler.add(id: UInt64(id), prompt: [1, 2, 3, 4], maxTokens: 6) }
        let plan = scheduler.schedule()
        #expect(plan.admitted == [1, 2])
        #expect(scheduler.reservedBytes == 200 && scheduler.waitingCount == 1)
        scheduler.finish(1)
        #expect(scheduler.reservedBytes == 100)
        #expect(scheduler.schedule().admitted == [3])
        #expect(scheduler.reservedBytes == 200)
    }

    @Test func admissionIsBoundedBySequenceCount() throws {
        var scheduler = Scheduler(limits: limits(maxRunning: 2, kvBytes: 100_000))
        for id in 1...3 { try scheduler.add(id: UInt64(id), prompt: [1], maxTokens: 1) }
        #expect(scheduler.schedule().admitted == [1, 2])
        #expect(scheduler.runningCount == 2 && scheduler.waitingCount == 1)
    }

    @Test func refusalsCarryTheReason() throws {
        var scheduler = Scheduler(limits: limits(kvBytes: 100, waiting: 1, context: 16))
        #expect(throws: SubmissionError.self) { try scheduler.add(id: 1, prompt: [], maxTokens: 1) }
        do { try scheduler.add(id: 1, prompt: Array(repeating: 1, count: 16), maxTokens: 1); Issue.record("accepted") }
        catch let error as SubmissionError { #expect(error.kind == .promptTooLong && error.description.contains("16")) }
        do { try scheduler.add(id: 1, prompt: [1, 2, 3], maxTokens: 60); Issue.record("accepted") }
        catch let error as SubmissionError { #expect(error.kind == .invalid && error.description.contains("KV")) }
        try scheduler.add(id: 2, prompt: [1], maxTokens: 1)
        do { try scheduler.add(id: 3, prompt: [1], maxTokens: 1); Issue.record("accepted") }
        catch let error as SubmissionError { #expect(error.kind == .queueFull) }
    }

    @Test func cancellingAWaitingRequestRemovesIt() throws {
        var scheduler = Scheduler(limits: limits(maxRunning: 1))
        try scheduler.add(id: 1, prompt: [1], maxTokens: 1)
        try scheduler.add(id: 2, prompt: [1], maxTokens: 1)
        _ = scheduler.schedule()
        scheduler.finish(2)
        #expect(!scheduler.contains(2) && scheduler.waitingCount == 0 && scheduler.contains(1))
        scheduler.finish(1)
        #expect(scheduler.reservedBytes == 0 && scheduler.runningCount == 0)
    }

    @Test func underMemoryPressureEveryPlanStaysWithinTheBudget() throws {
        var generator = SplitMix64(seed: 7)
        var scheduler = Scheduler(limits: limits(maxRunning: 8, budget: 16, kvBytes: 2_000, waiting: 1_000, context: 64))
        var nextId: UInt64 = 1
        var remaining: [UInt64: Int] = [:]
        for _ in 0..<500 {
            if generator.next() % 3 == 0 {
                let prompt = Array(repeating: 1, count: Int(generator.next() % 20) + 1)
                let maxTokens = Int(generator.next() % 20) + 1
                if (try? scheduler.add(id: nextId, prompt: prompt, maxTokens: maxTokens)) != nil { remaining[nextId] = maxTokens }
                nextId += 1
            }
            let plan = scheduler.schedule()
            #expect(scheduler.reservedBytes <= 2_000)
            #expect(plan.tokenCount <= 16)
            var sampled: [UInt64: Int] = [:]
            for chunk in plan.chunks where chunk.samplesNextToken { sampled[chunk.sequenceId] = 5 }
            scheduler.update(plan: plan, sampled: sampled)
            for id in sampled.keys {
                remaining[id]! -= 1
                if remaining[id]! == 0 { scheduler.finish(id) }
            }
        }
        #expect(nextId > 100)
    }
}

extension SchedulerTests {
    @Test func theSchedulerDecidesLengthAndContextStops() {
        // Max tokens reached.
        #expect(Scheduler.reachedLimit(generated: 4, maxTokens: 4, cachedTokens: 10, contextLength: 100))
        #expect(!Scheduler.reachedLimit(generated: 3, maxTokens: 4, cachedTokens: 10, contextLength: 100))
        // The next decode input needs one more position: 99 cached of 100 is the last.
        #expect(Scheduler.reachedLimit(generated: 1, maxTokens: 50, cachedTokens: 99, contextLength: 100))
        #expect(!Scheduler.reachedLimit(generated: 1, maxTokens: 50, cachedTokens: 98, contextLength: 100))
    }
}
