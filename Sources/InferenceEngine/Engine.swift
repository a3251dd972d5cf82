import Foundation
import MoEModels

/// Counters describing the engine's work so far; a consistent snapshot.
public struct EngineStatistics: Sendable, Codable, Equatable {
    public var waitingRequests = 0
    public var runningSequences = 0
    public var steps = 0
    public var promptTokens = 0
    public var generatedTokens = 0
    public var finishedRequests = 0
    public var failedRequests = 0
    public var cancelledRequests = 0
    /// Seconds spent in forward passes.
    public var busySeconds = 0.0

    /// All counters zero.
    public init() {}
}

/// The engine thread: continuous batching over one model. Each step runs the scheduler's plan
/// as one forward pass over the tokens of every scheduled sequence, so that in each MoE layer
/// an expert chosen by several sequences is acquired and multiplied once.
public final class Engine: GenerationService, @unchecked Sendable {
    /// The model.
    public let model: TransformerModel
    private let decode: @Sendable ([Int]) -> String

    /// Everything below is guarded by `condition`.
    private let condition = NSCondition()
    private var scheduler: Scheduler
    private var requests: [UInt64: RequestState] = [:]
    private var pendingCancellations: Set<UInt64> = []
    private var nextId: UInt64 = 1
    private var accepting = true
    private var running = false
    private var statistics = EngineStatistics()
    private var thread: Thread?

    /// A request's per-sequence state, touched only by the engine thread once admitted.
    private final class RequestState {
        let id: UInt64
        let request: GenerationRequest
        let onEvent: @Sendable (GenerationEvent) -> Void
        var sampler: TokenSampler
        var assembler: TextAssembler
        /// This sequence's own grammar state (nil when unconstrained).
        let constraint: (any TokenConstraint)?
        var cache: KVCache?
        var generated = 0
        var prefillStart: UInt64?
        var firstTokenTime: UInt64?

        init(id: UInt64, request: GenerationRequest, onEvent: @escaping @Sendable (GenerationEvent) -> Void,
             decode: @escaping @Sendable ([Int]) -> String) {
            self.id = id
            self.request = request
            self.onEvent = onEvent
            sampler = TokenSampler(parameters: request.sampling, prompt: request.prompt)
            assembler = TextAssembler(decode: decode, stopStrings: request.stopStrings)
            constraint = request.constraint?.make()
        }
    }

    /// An engine over `model`; `decode` turns token ids into text (the tokenizer's decode).
    public init(model: TransformerModel, limits: SchedulerLimits, decode: @escaping @Sendable ([Int]) -> String) {
        self.model = model
        self.decode = decode
        scheduler = Scheduler(limits: limits)
    }

    /// Scheduler limits for `model` with `kvCacheBudgetBytes` of KV cache.
    public static func defaultLimits(for model: TransformerModel, kvCacheBudgetBytes: Int, maxRunningSequences: Int = 8,
                                     tokenBudgetPerStep: Int = 256, maxWaitingRequests: Int = 64) -> SchedulerLimits {
        let config = model.config
        let window = TransformerModel.kvWindow(config, precision: model.kvPrecision)
        return SchedulerLimits(
            maxRunningSequences: maxRunningSequences, tokenBudgetPerStep: tokenBudgetPerStep,
            kvCacheBudgetBytes: kvCacheBudgetBytes,
            kvBytesPerToken: model.kvBytesPerToken,
            maxWaitingRequests: maxWaitingRequests, contextLength: config.maxPositionEmbeddings,
            sequenceStateBytes: model.sequenceStateBytes,
            kvWindowPositions: window.positions, kvWindowBytesPerToken: window.bytesPerToken)
    }

    /// Starts the engine thread.
    public func start() {
        condition.lock()
        defer { condition.unlock() }
        guard thread == nil else { return }
        running = true
        let thread = Thread { [self] in loop() }
        thread.name = "moe-engine"
        thread.stackSize = 8 << 20
        self.thread = thread
        thread.start()
    }

    public func submit(_ request: GenerationRequest, onEvent: @escaping @Sendable (GenerationEvent) -> Void) throws -> UInt64 {
        condition.lock()
        defer { condition.unlock() }
        guard accepting else { throw SubmissionError(.shuttingDown, "the server is shutting down") }
        if let bad = request.prompt.first(where: { $0 < 0 || $0 >= model.config.vocabSize }) {
            throw SubmissionError(.invalid, "token id \(bad) is outside the vocabulary (0..<\(model.config.vocabSize))")
        }
        let id = nextId
        try scheduler.add(id: id, prompt: request.prompt, maxTokens: request.maxTokens)
        nextId += 1
        requests[id] = RequestState(id: id, request: request, onEvent: onEvent, decode: decode)
        condition.signal()
        return id
    }

    public func cancel(_ id: UInt64) {
        condition.lock()
        defer { condition.unlock() }
        guard requests[id] != nil else { return }
        pendingCancellations.insert(id)
        condition.signal()
    }

    /// A snapshot of the counters.
    public var currentStatistics: EngineStatistics {
        condition.lock()
        defer { condition.unlock() }
        var snapshot = statistics
        snapshot.waitingRequests = scheduler.waitingCount
        snapshot.runningSequences = scheduler.runningCount
        return snapshot
    }

    /// The sequences the engine holds (running, then waiting), for llama-server's `/slots`.
    public var sequenceStates: [SequenceState] {
        condition.lock()
        defer { condition.unlock() }
        return scheduler.sequenceStates
    }

    /// Bytes of KV cache reserved by running sequences.
    public var reservedKVBytes: Int {
        condition.lock()
        defer { condition.unlock() }
        return scheduler.reservedBytes
    }

    /// Stops accepting requests, lets running ones finish for up to `grace` seconds, cancels
    /// the rest, and stops the thread.
    public func shutdown(grace: Double) {
        condition.lock()
        accepting = false
        let deadline = Date().addingTimeInterval(grace)
        while !requests.isEmpty && Date() < deadline { _ = condition.wait(until: min(deadline, Date().addingTimeInterval(0.05))) }
        pendingCancellations.formUnion(requests.keys)
        running = false
        condition.broadcast()
        condition.unlock()
        while true {
            condition.lock()
            let done = thread == nil
            condition.unlock()
            if done { break }
            usleep(1000)
        }
    }

    // MARK: - The engine thread

    private func loop() {
        while true {
            condition.lock()
            while running && pendingCancellations.isEmpty && scheduler.waitingCount == 0 && scheduler.runningCount == 0 {
                condition.wait()
            }
            let cancelled = applyCancellations()
            if !running && requests.isEmpty {
                // The last cancelled requests hear of it before `shutdown` sees the thread gone.
                condition.unlock()
                cancelled.deliver()
                condition.lock()
                thread = nil
                condition.broadcast()
                condition.unlock()
                return
            }
            let plan = scheduler.schedule()
            let states = plan.chunks.map { requests[$0.sequenceId]! }
            condition.unlock()
            // Events go out after the lock is released: a callback may call `cancel` or `submit`.
            cancelled.deliver()
            if plan.isEmpty { continue }
            step(plan, states: states)
        }
    }

    /// Caller holds the lock; returns the cancelled requests' final events for the caller to
    /// deliver once it has released the lock.
    private func applyCancellations() -> PendingEvents {
        var events = PendingEvents()
        for id in pendingCancellations {
            guard let state = requests.removeValue(forKey: id) else { continue }
            scheduler.finish(id)
            statistics.cancelledRequests += 1
            events.append(state.onEvent, .finished(reason: .cancelled, text: "", usage: usage(state), timings: timings(state, end: now())))
        }
        pendingCancellations.removeAll()
        condition.broadcast()
        return events
    }

    /// Events collected under the lock and delivered after it is released, so that a callback
    /// that calls back into the engine (`cancel`, `submit`, `currentStatistics`) cannot deadlock.
    private struct PendingEvents {
        private var events: [(@Sendable (GenerationEvent) -> Void, GenerationEvent)] = []
        mutating func append(_ onEvent: @escaping @Sendable (GenerationEvent) -> Void, _ event: GenerationEvent) {
            events.append((onEvent, event))
        }
        func deliver() { for (onEvent, event) in events { onEvent(event) } }
    }

    private func step(_ plan: StepPlan, states: [RequestState]) {
        let start = now()
        var inputs: [SequenceInput] = []
        for (chunk, state) in zip(plan.chunks, states) {
            if state.cache == nil { state.cache = model.makeCache() }
            if state.prefillStart == nil { state.prefillStart = start }
            inputs.append(SequenceInput(cache: state.cache!, tokens: chunk.tokens))
        }
        let outputs: StepLogits // in the model's workspace: read before the next step
        do {
            outputs = try model.forwardStep(inputs)
        } catch {
            // A failed read of an expert fails the requests of this step, not the process.
            var failed = PendingEvents()
            condition.lock()
            for state in states where requests.removeValue(forKey: state.id) != nil {
                scheduler.finish(state.id)
                statistics.failedRequests += 1
                failed.append(state.onEvent, .failed(message: "\(error)"))
            }
            condition.broadcast()
            condition.unlock()
            failed.deliver()
            return
        }
        let end = now()

        var sampled: [UInt64: Int] = [:]
        var finished: [(RequestState, FinishReason, String)] = []
        for ((chunk, state), logits) in zip(zip(plan.chunks, states), outputs) where chunk.samplesNextToken {
            if state.firstTokenTime == nil { state.firstTokenTime = end }
            let request = state.request
            // Copied only when a bias or a grammar changes them.
            var changed: [Float]?
            if !request.logitBias.isEmpty || state.constraint != nil {
                var logits = Array(logits)
                for (token, bias) in request.logitBias where token >= 0 && token < logits.count { logits[token] += bias }
                if let constraint = state.constraint, !constraint.constrain(&logits) {
                    // The grammar allows no token at all (it cannot happen with a grammar that has no
                    // dead ends): stop rather than sample outside it.
                    finished.append((state, .stop, state.assembler.finish()))
                    continue
                }
                changed = logits
            }
            let topCount = request.logprobs ? request.topLogprobs : 0
            let choice = changed.map { state.sampler.sample($0, topCount: topCount, logprobs: request.logprobs) }
                ?? state.sampler.sample(logits, topCount: topCount, logprobs: request.logprobs)
            state.constraint?.accept(choice.token)
            state.generated += 1
            sampled[state.id] = choice.token
            if request.stopTokenIds.contains(choice.token) {
                finished.append((state, .stop, state.assembler.finish()))
                continue
            }
            let piece = state.assembler.append(choice.token)
            state.onEvent(.token(id: choice.token, text: piece.text, logprob: choice.logprob,
                                 topLogprobs: choice.top))
            if piece.stopped {
                finished.append((state, .stop, ""))
            } else if state.constraint?.isComplete == true {
                finished.append((state, .stop, state.assembler.finish()))
            } else if Scheduler.reachedLimit(generated: state.generated, maxTokens: request.maxTokens,
                                             cachedTokens: state.cache!.length, contextLength: model.config.maxPositionEmbeddings) {
                finished.append((state, .length, state.assembler.finish()))
            }
        }

        var done = PendingEvents()
        condition.lock()
        statistics.steps += 1
        statistics.busySeconds += Double(end - start) / 1e9
        statistics.promptTokens += plan.chunks.filter(\.isPrompt).reduce(0) { $0 + $1.tokens.count }
        statistics.generatedTokens += sampled.count
        scheduler.update(plan: plan, sampled: sampled)
        for (state, reason, text) in finished where requests.removeValue(forKey: state.id) != nil {
            scheduler.finish(state.id)
            statistics.finishedRequests += 1
            done.append(state.onEvent, .finished(reason: reason, text: text, usage: usage(state), timings: timings(state, end: end)))
        }
        condition.broadcast()
        condition.unlock()
        done.deliver()
    }

    private func usage(_ state: RequestState) -> Usage {
        Usage(promptTokens: state.request.prompt.count, completionTokens: state.generated)
    }

    private func timings(_ state: RequestState, end: UInt64) -> Timings {
        let prefillStart = state.prefillStart ?? end
        let firstToken = state.firstTokenTime ?? end
        return Timings(promptN: state.request.prompt.count, promptMs: Double(firstToken - prefillStart) / 1e6,
                       predictedN: state.generated, predictedMs: Double(end - firstToken) / 1e6)
    }

    private func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
}

extension Engine {
    /// Submits `request` and returns its events as an asynchronous stream; ending the stream's
    /// consumption early cancels the request.
    public func events(for request: GenerationRequest) throws -> AsyncStream<GenerationEvent> {
        let (stream, continuation) = AsyncStream<GenerationEvent>.makeStream()
        let id = try submit(request) { event in
            continuation.yield(event)
            switch event {
            case .finished, .failed: continuation.finish()
            case .token: break
            }
        }
        continuation.onTermination = { [weak self] termination in
            if case .cancelled = termination { self?.cancel(id) }
        }
        return stream
    }
}
