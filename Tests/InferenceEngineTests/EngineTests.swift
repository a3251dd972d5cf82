import Foundation
import Testing
import ModelFormats
import MoEModels
@testable import InferenceEngine

/// Counts every expert acquisition, per layer, to prove each expert is acquired once per step.
final class CountingExpertProvider: ExpertProvider, @unchecked Sendable {
    let inner: ExpertProvider
    private let lock = NSLock()
    private(set) var acquisitions: [[Int]] = [] // one entry per withExperts call: the experts

    init(_ inner: ExpertProvider) { self.inner = inner }

    func withExperts(layer: Int, experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        lock.lock(); acquisitions.append(experts); lock.unlock()
        try inner.withExperts(layer: layer, experts: experts, body)
    }

    func reset() { lock.lock(); acquisitions = []; lock.unlock() }
}

enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/models")

    static func named(_ prefix: String) -> URL {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        return root.appendingPathComponent(names.sorted().first { $0.hasPrefix(prefix) } ?? prefix)
    }

    static func model(_ prefix: String, counting: Bool = false) throws -> (TransformerModel, CountingExpertProvider?) {
        let checkpoint = try CheckpointDirectory(url: named(prefix))
        let description = ArchitectureDescription.of(checkpoint.config.architecture)
        let inMemory = try InMemoryExpertProvider(config: checkpoint.config, weights: checkpoint, names: description)
        let counter = counting ? CountingExpertProvider(inMemory) : nil
        let model = try TransformerModel(config: checkpoint.config, weights: checkpoint, experts: counter ?? inMemory)
        return (model, counter)
    }
}

/// Collects one request's events.
final class EventCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var tokens: [Int] = []
    private var text = ""
    private(set) var finish: FinishReason?
    private(set) var failure: String?
    private var usage: Usage?
    private let done = DispatchSemaphore(value: 0)

    func handle(_ event: GenerationEvent) {
        lock.lock()
        switch event {
        case .token(let id, let piece, _, _): tokens.append(id); text += piece
        case .finished(let reason, let rest, let usage, _): finish = reason; text += rest; self.usage = usage
        case .failed(let message): failure = message
        }
        lock.unlock()
        if case .token = event {} else { done.signal() }
    }

    func wait() -> (tokens: [Int], text: String, finish: FinishReason?, usage: Usage?) {
        done.wait()
        lock.lock(); defer { lock.unlock() }
        return (tokens, text, finish, usage)
    }

    var tokenCount: Int { lock.lock(); defer { lock.unlock() }; return tokens.count }
}

func greedy(_ prompt: [Int], maxTokens: Int) -> GenerationRequest {
    var sampling = SamplingParameters()
    sampling.temperature = 0
    return GenerationRequest(prompt: prompt, maxTokens: maxTokens, sampling: sampling)
}

let toyDecode: @Sendable ([Int]) -> String = { ids in ids.map { "<\($0)>" }.joined() }

/// A thread-safe counter.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    /// Adds one and returns the new value.
    func increment() -> Int { lock.lock(); defer { lock.unlock() }; value += 1; return value }
}

@Suite(.serialized) struct EngineTests {
    @Test func batchedSequencesProduceTheSameGreedyTokensAsEachAlone() throws {
        let (model, _) = try Fixtures.model("qwen2moe-shared")
        let prompts = (0..<6).map { i in (0..<(3 + i * 2)).map { ($0 * 7 + i * 13) % model.config.vocabSize } }
        let alone: [[Int]] = try prompts.map { prompt in
            let generator = Generator(model: model)
            return try generator.generate(prompt: prompt, maxTokens: 6, stopTokens: []).tokens
        }
        let engine = Engine(model: model, limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: 64 << 20, tokenBudgetPerStep: 7),
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
            #expect(result.text == toyDecode(expected))
        }
        #expect(engine.currentStatistics.generatedTokens == 36)
    }

    @Test func aStepWithEightSequencesAcquiresEachNeededExpertOnce() throws {
        let (model, counter) = try Fixtures.model("mixtral-gqa", counting: true)
        let caches = (0..<8).map { _ in model.makeCache() }
        let inputs = caches.enumerated().map { i, cache in SequenceInput(cache: cache, tokens: [(i * 11) % model.config.vocabSize, 3, 5]) }
        counter!.reset()
        _ = try model.forward(inputs)
        // One acquisition call per MoE layer, each listing distinct experts.
        #expect(counter!.acquisitions.count == model.config.moeLayers.count)
        for experts in counter!.acquisitions { #expect(Set(experts).count == experts.count) }
        // 24 tokens × top-k choices collapse onto at most `expertCount` acquisitions per layer.
        #expect(counter!.acquisitions.allSatisfy { $0.count <= model.config.expertCount })
    }

    @Test func theSameSeedGivesTheSameTokensAloneOrBesideOthers() throws {
        let (model, _) = try Fixtures.model("olmoe")
        var sampling = SamplingParameters()
        sampling.temperature = 1.0
        sampling.seed = 1234
        let request = GenerationRequest(prompt: [1, 2, 3, 4], maxTokens: 8, sampling: sampling)
        let engine = Engine(model: model, limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: 64 << 20), decode: toyDecode)
        engine.start()
        defer { engine.shutdown(grace: 1) }
        let alone = EventCollector()
        _ = try engine.submit(request) { alone.handle($0) }
        let aloneTokens = alone.wait().tokens
        let together = EventCollector()
        let others = (0..<3).map { _ in EventCollector() }
        for (i, other) in others.enumerated() {
            var noisy = sampling
            noisy.seed = UInt64(i)
            _ = try engine.submit(GenerationRequest(prompt: [5, 6, 7], maxTokens: 8, sampling: noisy)) { other.handle($0) }
        }
        _ = try engine.submit(request) { together.handle($0) }
        #expect(together.wait().tokens == aloneTokens)
        for other in others { _ = other.wait() }
    }

    @Test func cancellationFreesTheSequenceAndItsKVReservation() throws {
        let (model, _) = try Fixtures.model("qwen3moe")
        // The engine thread decodes each token's text; holding it there on the second token
        // makes the cancellation land mid-generation however fast the tiny model runs.
        let reachedSecondToken = DispatchSemaphore(value: 0), cancelled = DispatchSemaphore(value: 0)
        let decodeCalls = Counter()
        let engine = Engine(model: model, limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: 64 << 20), decode: { ids in
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
        engine.cancel(id)
        cancelled.signal()
        let result = collector.wait()
        #expect(result.finish == .cancelled)
        #expect(result.tokens.count < 100)
        #expect(engine.reservedKVBytes == 0)
        #expect(engine.currentStatistics.runningSequences == 0)
        #expect(engine.currentStatistics.cancelledRequests == 1)
    }

    @Test func stopTokenEndsWithStopAndRequestsOverTheBudgetAreRefused() throws {
        let (model, _) = try Fixtures.model("mixtral-gqa")
        let generator = Generator(model: model)
        let expected = try generator.generate(prompt: [4, 5, 6], maxTokens: 4, stopTokens: []).tokens
        let engine = Engine(model: model, limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: 1 << 20), decode: toyDecode)
        engine.start()
        defer { engine.shutdown(grace: 1) }
        var request = greedy([4, 5, 6], maxTokens: 4)
        request.stopTokenIds = [expected[2]]
        let collector = EventCollector()
        _ = try engine.submit(request) { collector.handle($0) }
        let result = collector.wait()
        #expect(result.finish == .stop)
        #expect(result.tokens == Array(expected.prefix(2)) || expected[0] == expected[2] || expected[1] == expected[2])
        do {
            _ = try engine.submit(greedy(Array(repeating: 1, count: model.config.maxPositionEmbeddings), maxTokens: 1)) { _ in }
            Issue.record("an over-long prompt was accepted")
        } catch let error as SubmissionError {
            #expect(error.kind == .promptTooLong)
        }
    }
}

extension EngineTests {
    /// Events leave the engine after it releases its lock: a finished event whose callback
    /// cancels another request, submits a new one and reads the statistics must not deadlock.
    @Test func anEventCallbackMayCancelSubmitAndReadStatistics() throws {
        let (model, _) = try Fixtures.model("qwen2moe-shared")
        let engine = Engine(model: model, limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: 64 << 20), decode: toyDecode)
        engine.start()
        defer { engine.shutdown(grace: 1) }
        let long = EventCollector()
        // The long request's first token waits (on the engine thread) until the short one is in, so the
        // long one cannot finish first however slowly this thread is scheduled.
        let shortSubmitted = DispatchSemaphore(value: 0)
        let longTokens = Counter()
        let longId = try engine.submit(greedy([5, 6, 7], maxTokens: 200)) { event in
            if case .token = event, longTokens.increment() == 1 { _ = shortSubmitted.wait(timeout: .now() + 30) }
            long.handle(event)
        }
        let followUp = EventCollector()
        let callbackDone = DispatchSemaphore(value: 0)
        let cancelledEvents = Counter()
        _ = try engine.submit(greedy([1, 2, 3], maxTokens: 1)) { [engine] event in
            guard case .finished = event else { return }
            engine.cancel(longId)
            _ = engine.currentStatistics
            _ = try? engine.submit(greedy([9, 8], maxTokens: 2)) { followUp.handle($0) }
            callbackDone.signal()
        }
        shortSubmitted.signal()
        #expect(callbackDone.wait(timeout: .now() + 30) == .success)
        let longResult = long.wait()
        #expect(longResult.finish == .cancelled)
        // A request's callback cancels the request itself on every event, its final one included
        // (then a no-op on a request already gone, and no deadlock).
        let selfCancelling = EventCollector()
        let selfId = RequestIdBox()
        let id = try engine.submit(greedy([4, 4, 4], maxTokens: 200)) { [engine] event in
            // Until `submit` has returned the id is 0, which cancels nothing; a later token does.
            engine.cancel(selfId.get())
            _ = cancelledEvents.increment()
            selfCancelling.handle(event)
        }
        selfId.set(id)
        #expect(selfCancelling.wait().finish == .cancelled)
        #expect(followUp.wait().finish == .length)
        #expect(engine.currentStatistics.cancelledRequests == 2)
    }
}

/// A request id written by the submitting thread and read by the engine's callback.
final class RequestIdBox: @unchecked Sendable {
    private let lock = NSLock()
    private var id: UInt64 = 0
    func set(_ id: UInt64) { lock.withLock { self.id = id } }
    func get() -> UInt64 { lock.withLock { id } }
}
