import Foundation
import Testing
import ModelFormats
import MoEModels
@testable import InferenceEngine

/// One request's tokens, logprobs and usage.
final class LogprobCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var tokens: [Int] = []
    private var logprobs: [Float] = []
    private var usage: Usage?
    private var timings: Timings?
    private(set) var failure: String?
    private let done = DispatchSemaphore(value: 0)

    func handle(_ event: GenerationEvent) {
        lock.lock()
        switch event {
        case .token(let id, _, let logprob, _): tokens.append(id); logprobs.append(logprob?.logprob ?? .nan)
        case .finished(_, _, let usage, let timings): self.usage = usage; self.timings = timings
        case .failed(let message): failure = message
        }
        lock.unlock()
        if case .token = event {} else { done.signal() }
    }

    func wait() -> (tokens: [Int], logprobs: [Float], usage: Usage?, timings: Timings?) {
        done.wait()
        lock.lock(); defer { lock.unlock() }
        return (tokens, logprobs, usage, timings)
    }
}

/// Prompt caching across requests and `n` > 1 forks of one prefill: the results equal an
/// uncached run's, bit for bit, on the three kinds of cache (full attention, sliding windows,
/// a linear-attention state), and retained caches stay within the KV budget.
@Suite(.serialized) struct PromptCacheTests {
    /// Sampled (temperature 0.9, seeded) with logprobs, so equal logprobs mean equal logits.
    static func sampled(_ prompt: [Int], maxTokens: Int = 6, seed: UInt64 = 7, cache: Bool = true) -> GenerationRequest {
        var sampling = SamplingParameters()
        sampling.temperature = 0.9
        sampling.seed = seed
        var request = GenerationRequest(prompt: prompt, maxTokens: maxTokens, sampling: sampling, logprobs: true, topLogprobs: 0)
        request.cachePrompt = cache
        return request
    }

    static func run(_ engine: Engine, _ request: GenerationRequest) throws -> (tokens: [Int], logprobs: [Float], usage: Usage?, timings: Timings?) {
        let collector = LogprobCollector()
        _ = try engine.submit(request) { collector.handle($0) }
        let result = collector.wait()
        #expect(collector.failure == nil)
        return result
    }

    /// An engine on `fixture`; partial prefix reuse `.always` by default, so that the reuse rules
    /// of each kind of cache are what is tested (`.whenExact` has its own test).
    static func engine(_ fixture: String, budget: Int = 64 << 20, partial: PartialPromptReuse = .always) throws -> Engine {
        let (model, _) = try Fixtures.model(fixture)
        let engine = Engine(model: model, limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: budget), decode: toyDecode)
        engine.partialPromptReuse = partial
        engine.start()
        return engine
    }

    /// `prompt` on a fresh engine with nothing cached: the reference.
    static func uncached(_ fixture: String, _ request: GenerationRequest) throws -> (tokens: [Int], logprobs: [Float]) {
        let engine = try engine(fixture)
        defer { engine.shutdown(grace: 1) }
        let result = try run(engine, request)
        #expect(result.usage?.cachedTokens == 0)
        return (result.tokens, result.logprobs)
    }

    @Test(arguments: ["qwen2moe-shared", "gptoss-sliding4-sinks", "qwen3next", "deepseekv2-lite"])
    func theSameRequestTwiceReusesTheWholePromptAndIsBitIdentical(fixture: String) throws {
        let prompt = (0..<30).map { ($0 * 11 + 3) % 90 }
        let engine = try Self.engine(fixture)
        defer { engine.shutdown(grace: 1) }
        let first = try Self.run(engine, Self.sampled(prompt))
        let second = try Self.run(engine, Self.sampled(prompt))
        #expect(first.usage?.cachedTokens == 0)
        #expect(second.usage?.cachedTokens == prompt.count)
        #expect(second.timings?.cacheN == prompt.count && second.timings?.promptN == 0)
        #expect(second.tokens == first.tokens)
        #expect(second.logprobs == first.logprobs)
        #expect(engine.currentStatistics.promptTokens == prompt.count) // the second run ran no prompt token
    }

    @Test func aRequestSharingAPrefixReusesItAndMatchesAnUncachedRun() throws {
        // Short prompts: every chunk is under 9 rows, where the bf16 kernels' per-row
        // arithmetic does not depend on the row count, so equality is exact.
        let first = [5, 17, 30, 42, 8, 61, 2, 19]
        let second = Array(first.prefix(5)) + [70, 71, 3]
        let reference = try Self.uncached("qwen2moe-shared", Self.sampled(second, seed: 3))
        let engine = try Self.engine("qwen2moe-shared")
        defer { engine.shutdown(grace: 1) }
        _ = try Self.run(engine, Self.sampled(first))
        let cached = try Self.run(engine, Self.sampled(second, seed: 3))
        #expect(cached.usage?.cachedTokens == 5)
        #expect(cached.timings?.promptN == 3)
        #expect(cached.tokens == reference.tokens)
        #expect(cached.logprobs == reference.logprobs)
    }

    @Test(arguments: ["qwen2moe-shared", "qwen3next", "gptoss-sliding4-sinks"])
    func byDefaultAPartialHitIsTakenOnlyWhereItIsBitIdentical(fixture: String) throws {
        // 40 + 10 tokens: the GEMM path, whose bf16 arithmetic depends on the row count. The
        // engine probes the model once; it reuses the prefix only if the probe found the
        // prefill exact, so the result equals the uncached run bit for bit either way.
        let first = (0..<40).map { ($0 * 7 + 1) % 95 }
        let second = first + (0..<10).map { ($0 * 5 + 2) % 95 }
        let reference = try Self.uncached(fixture, Self.sampled(second, maxTokens: 8, seed: 5))
        let engine = try Self.engine(fixture, partial: .whenExact)
        defer { engine.shutdown(grace: 1) }
        _ = try Self.run(engine, Self.sampled(first, maxTokens: 1))
        let cached = try Self.run(engine, Self.sampled(second, maxTokens: 8, seed: 5))
        let exact = try #require(engine.exactPrefill)
        #expect(cached.usage?.cachedTokens == (exact ? 40 : 0))
        #expect(cached.tokens == reference.tokens)
        #expect(cached.logprobs == reference.logprobs)
        // The same prompt again is a whole hit, exact on any kernels.
        let again = try Self.run(engine, Self.sampled(second, maxTokens: 8, seed: 5))
        #expect(again.usage?.cachedTokens == second.count && again.logprobs == reference.logprobs)
        print("\(fixture): prefill exact across chunkings: \(exact)")
    }

    /// Every sequence the model ran is ended, the probe's too. The probe's three caches were
    /// never ended before session 34: for the 512 steps until the expert cache's routing feeder
    /// found them stale, their 160 tokens of routing counted as running in the sequence-aware
    /// policy, which kept the probe's experts over the next requests' (a one-slot server on the
    /// synthetic OLMoE decoded requests 2-6 at 160-196 ms a token against 121-131 with them ended).
    @Test func theExactnessProbeEndsTheSequencesItRuns() throws {
        final class SequenceLog: RoutingObserver {
            var ran: Set<Int> = []
            var ended: Set<Int> = []
            func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) {}
            func willRunSequences(_ sequences: [SequenceRows]) { ran.formUnion(sequences.map(\.id)) }
            func sequenceEnded(_ id: Int) { ended.insert(id) }
        }
        let (model, _) = try Fixtures.model("qwen2moe-shared")
        let log = SequenceLog()
        model.routingObserver = log
        let engine = Engine(model: model, limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: 64 << 20), decode: toyDecode)
        engine.partialPromptReuse = .whenExact
        engine.start()
        let first = (0..<40).map { ($0 * 7 + 1) % 95 }
        _ = try Self.run(engine, Self.sampled(first, maxTokens: 2))
        _ = try Self.run(engine, Self.sampled(first + [3, 5, 7], maxTokens: 2))
        engine.shutdown(grace: 1)
        #expect(engine.exactPrefill != nil, "the second request's partial hit runs the probe")
        // Two requests and the probe's three sequences (the whole run, the split run, its neighbour).
        #expect(log.ran.count >= 4)
        #expect(log.ran.subtracting(log.ended).isEmpty, "sequences run and never ended: \(log.ran.subtracting(log.ended).sorted())")
    }

    /// A chat that grows turn by turn: turn 2's prompt is turn 1's prompt, its reply and a new
    /// message. With the default `.whenExact` the engine reuses turn 1's whole KV (prompt and the
    /// reply's decoded rows, all but the last sampled token, which was never run) and prefills
    /// only the rest; the result equals a cold engine's run of turn 2 bit for bit. Turn 1 runs
    /// as one 70-row chunk (the MoE block's path above 64 rows) then 1-row decode steps, the
    /// cold turn 2 as one 112-row chunk, the cached one as a 30-row chunk.
    @Test(arguments: ["qwen2moe-shared", "deepseekv2-lite", "qwen3next"])
    func aGrowingConversationReusesTheLastTurnAndMatchesAColdEngine(fixture: String) throws {
        let turn1 = (0..<70).map { ($0 * 13 + 5) % 97 }
        let engine = try Self.engine(fixture, partial: .whenExact)
        defer { engine.shutdown(grace: 1) }
        let reply = try Self.run(engine, Self.sampled(turn1, maxTokens: 12, seed: 11))
        #expect(reply.tokens.count == 12)
        let turn2 = turn1 + reply.tokens + (0..<30).map { ($0 * 3 + 1) % 97 }
        let reference = try Self.uncached(fixture, Self.sampled(turn2, maxTokens: 8, seed: 5))
        let cached = try Self.run(engine, Self.sampled(turn2, maxTokens: 8, seed: 5))
        #expect(engine.exactPrefill == true)
        #expect(cached.usage?.cachedTokens == turn1.count + reply.tokens.count - 1)
        #expect(cached.timings?.cacheN == turn1.count + reply.tokens.count - 1)
        #expect(cached.timings?.promptN == 31)
        #expect(engine.currentStatistics.promptTokens == turn1.count + 31) // only the new tokens ran
        #expect(cached.tokens == reference.tokens)
        #expect(cached.logprobs.map(\.bitPattern) == reference.logprobs.map(\.bitPattern))
    }

    @Test func aLongerSharedPrefixGivesTheSameTokensWithinRounding() throws {
        // 40-token prompts run as one GEMM uncached but as a 40 + 10-row pair cached: the same
        // tokens, logprobs within float rounding (see PromptCache).
        let first = (0..<40).map { ($0 * 7 + 1) % 95 }
        let second = first + (0..<10).map { ($0 * 5 + 2) % 95 }
        let reference = try Self.uncached("qwen2moe-shared", Self.sampled(second, maxTokens: 8, seed: 5))
        let engine = try Self.engine("qwen2moe-shared")
        defer { engine.shutdown(grace: 1) }
        _ = try Self.run(engine, Self.sampled(first, maxTokens: 1))
        let cached = try Self.run(engine, Self.sampled(second, maxTokens: 8, seed: 5))
        #expect(cached.usage?.cachedTokens == 40)
        #expect(cached.tokens == reference.tokens)
        for (a, b) in zip(cached.logprobs, reference.logprobs) { #expect(abs(a - b) < 1e-3) }
    }

    @Test func aLinearStateIsReusedOnlyWhenItsWholeContentIsAPrefix() throws {
        let first = [5, 17, 30, 42, 8, 61, 2]
        let engine = try Self.engine("qwen3next")
        defer { engine.shutdown(grace: 1) }
        _ = try Self.run(engine, Self.sampled(first, maxTokens: 3))
        // Sharing part of the first prompt: the state cannot go back, nothing is reused.
        let partial = Array(first.prefix(4)) + [9, 9]
        let partialRun = try Self.run(engine, Self.sampled(partial, seed: 3))
        #expect(partialRun.usage?.cachedTokens == 0)
        #expect(partialRun.tokens == (try Self.uncached("qwen3next", Self.sampled(partial, seed: 3))).tokens)
        // Extending the whole first prompt: the snapshot taken at its end is reused (the delta
        // rule over 7 + 1 positions instead of 8 at once: the same tokens, logprobs within rounding).
        let extended = first + [9]
        let extendedRun = try Self.run(engine, Self.sampled(extended, seed: 4))
        #expect(extendedRun.usage?.cachedTokens == first.count)
        let reference = try Self.uncached("qwen3next", Self.sampled(extended, seed: 4))
        #expect(extendedRun.tokens == reference.tokens)
        for (a, b) in zip(extendedRun.logprobs, reference.logprobs) { #expect(abs(a - b) < 1e-3) }
    }

    /// Qwen3-Next's linear state cannot be cut back, so a retained cache keeps a snapshot of it
    /// taken at the end of its prompt. A prompt that leaves the cached tokens inside the last
    /// reply goes back to that snapshot (the attention rows truncated to it, the linear layers
    /// restored) and matches a cold engine bit for bit; one that leaves them inside the prompt
    /// reuses nothing (no snapshot there) and matches too. The default `.whenExact` takes these
    /// hits: the delta rule runs the recurrent form in every step, so the probe finds the prefill
    /// exact.
    @Test func aLinearStateGoesBackToThePromptEndSnapshotAndNoFurther() throws {
        let turn1 = (0..<70).map { ($0 * 13 + 5) % 97 }
        let engine = try Self.engine("qwen3next", partial: .whenExact)
        defer { engine.shutdown(grace: 1) }
        let reply = try Self.run(engine, Self.sampled(turn1, maxTokens: 12, seed: 11))
        #expect(reply.tokens.count == 12)
        let held = engine.promptCacheState
        #expect(held.entries == 1)
        print("qwen3next: one retained sequence of \(turn1.count + 11) positions holds \(held.bytes) bytes")

        // Diverging inside the reply: back to the end of turn 1's prompt.
        let edited = turn1 + [(reply.tokens[0] + 1) % 97] + (0..<20).map { ($0 * 3 + 1) % 97 }
        let editedReference = try Self.uncached("qwen3next", Self.sampled(edited, maxTokens: 8, seed: 5))
        let editedRun = try Self.run(engine, Self.sampled(edited, maxTokens: 8, seed: 5))
        #expect(engine.exactPrefill == true)
        #expect(editedRun.usage?.cachedTokens == turn1.count)
        #expect(editedRun.timings?.cacheN == turn1.count && editedRun.timings?.promptN == edited.count - turn1.count)
        #expect(editedRun.tokens == editedReference.tokens)
        #expect(editedRun.logprobs.map(\.bitPattern) == editedReference.logprobs.map(\.bitPattern))

        // Diverging inside turn 1's prompt: no snapshot covers the shared 50 tokens.
        let diverging = Array(turn1.prefix(50)) + (0..<25).map { ($0 * 7 + 2) % 97 }
        let divergingReference = try Self.uncached("qwen3next", Self.sampled(diverging, maxTokens: 8, seed: 6))
        let divergingRun = try Self.run(engine, Self.sampled(diverging, maxTokens: 8, seed: 6))
        #expect(divergingRun.usage?.cachedTokens == 0)
        #expect(divergingRun.tokens == divergingReference.tokens)
        #expect(divergingRun.logprobs.map(\.bitPattern) == divergingReference.logprobs.map(\.bitPattern))
    }

    @Test func aSlidingWindowIsNotTruncatedPastWhatItHolds() throws {
        // gpt-oss fixture: window 4 on alternate layers, 2 × 4 rows kept: after 14 positions
        // a window layer holds positions 10...13 only.
        let first = (0..<14).map { ($0 * 13 + 4) % 90 }
        let engine = try Self.engine("gptoss-sliding4-sinks")
        defer { engine.shutdown(grace: 1) }
        _ = try Self.run(engine, Self.sampled(first, maxTokens: 20))
        // Only 2 positions shared: the window layers moved past them.
        let early = Array(first.prefix(2)) + [1, 2, 3]
        let earlyRun = try Self.run(engine, Self.sampled(early, seed: 2))
        #expect(earlyRun.usage?.cachedTokens == 0)
        #expect(earlyRun.tokens == (try Self.uncached("gptoss-sliding4-sinks", Self.sampled(early, seed: 2))).tokens)
        // 13 shared: the snapshot at the end of the first prompt still holds that window
        // (position 13's query needs 10...13). 14 rows uncached against 1 cached: within rounding.
        let late = Array(first.prefix(13)) + [1]
        let lateRun = try Self.run(engine, Self.sampled(late, seed: 2))
        #expect(lateRun.usage?.cachedTokens == 13)
        let reference = try Self.uncached("gptoss-sliding4-sinks", Self.sampled(late, seed: 2))
        #expect(lateRun.tokens == reference.tokens)
        for (a, b) in zip(lateRun.logprobs, reference.logprobs) { #expect(abs(a - b) < 1e-3) }
    }

    @Test func cachePromptFalseNeitherReusesNorRetains() throws {
        let prompt = [5, 17, 30, 42]
        let engine = try Self.engine("qwen2moe-shared")
        defer { engine.shutdown(grace: 1) }
        _ = try Self.run(engine, Self.sampled(prompt, cache: false))
        #expect(engine.promptCacheState.entries == 0)
        _ = try Self.run(engine, Self.sampled(prompt))
        let third = try Self.run(engine, Self.sampled(prompt, cache: false))
        #expect(third.usage?.cachedTokens == 0)
    }

    @Test func retainedCachesStayWithinTheKVBudgetAndGiveWayToAdmissions() throws {
        let (model, _) = try Fixtures.model("qwen2moe-shared")
        // Room for two sequences of 64 positions; the pool must evict to admit each new one.
        let budget = 2 * Scheduler(limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: 1 << 30))
            .reservation(promptTokens: 40, maxTokens: 24)
        let engine = Engine(model: model, limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: budget), decode: toyDecode)
        engine.start()
        defer { engine.shutdown(grace: 1) }
        for i in 0..<5 {
            let prompt = (0..<40).map { ($0 * 3 + i * 17) % 90 }
            let result = try Self.run(engine, Self.sampled(prompt, maxTokens: 24))
            #expect(result.tokens.count == 24)
            #expect(engine.promptCacheState.bytes <= budget)
            #expect(engine.promptCacheState.entries >= 1)
        }
        #expect(engine.reservedKVBytes == 0)
    }

    @Test(arguments: ["qwen2moe-shared", "qwen3next"])
    func choicesForkTheFirstChoicesPrefill(fixture: String) throws {
        let prompt = (0..<20).map { ($0 * 5 + 1) % 90 }
        let (model, _) = try Fixtures.model(fixture)
        let engine = Engine(model: model, limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: 64 << 20), decode: toyDecode)
        defer { engine.shutdown(grace: 1) }
        let collectors = (0..<3).map { _ in LogprobCollector() }
        var request = Self.sampled(prompt, cache: false)
        request.sharedPrefill = SharedPrefill(group: 42, size: 3)
        engine.start()
        for c in collectors { _ = try engine.submit(request) { c.handle($0) } }
        let results = collectors.map { $0.wait() }
        // Same seed, same logits, same cache: every choice is the leader's completion.
        for result in results.dropFirst() {
            #expect(result.tokens == results[0].tokens)
            #expect(result.logprobs == results[0].logprobs)
            #expect(result.usage?.cachedTokens == prompt.count)
        }
        #expect(engine.currentStatistics.promptTokens == prompt.count) // prefilled once
        #expect(results[0].tokens == (try Self.uncached(fixture, Self.sampled(prompt))).tokens)
    }

    @Test func theExpertRecordCountsEachGeneratedTokensRoutes() throws {
        let (model, _) = try Fixtures.model("qwen2moe-shared")
        let engine = Engine(model: model, limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: 64 << 20), decode: toyDecode)
        engine.start()
        defer { engine.shutdown(grace: 1) }
        var request = greedy([5, 17, 30], maxTokens: 6)
        request.recordExperts = true
        let result = try Self.run(engine, request)
        let experts = try #require(result.usage?.experts)
        #expect(experts.count == model.config.layerCount)
        // The 6th token is sampled but never run: 5 decode inputs, each routed to top-k experts
        // in every MoE layer, and nothing in dense layers.
        for layer in 0..<model.config.layerCount {
            let total = experts[layer].reduce(0) { $0 + Int($1) }
            #expect(total == (model.config.moeLayers.contains(layer) ? 5 * model.config.expertsPerToken : 0))
        }
        let plain = try Self.run(engine, greedy([5, 17, 30], maxTokens: 6))
        #expect(plain.usage?.experts == [])
    }
}
