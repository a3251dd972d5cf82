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
    /// Prompt tokens taken from the prompt cache or a shared `n` > 1 prefill instead of run.
    public var cachedPromptTokens = 0
    /// Requests that started from the prompt cache.
    public var promptCacheHits = 0

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
    /// The scheduler's limits (context length, KV budget, batch sizes), fixed at creation.
    public var limits: SchedulerLimits { scheduler.limits }
    private var requests: [UInt64: RequestState] = [:]
    private var pendingCancellations: Set<UInt64> = []
    private var nextId: UInt64 = 1
    private var accepting = true
    private var running = false
    private var statistics = EngineStatistics()
    private var thread: Thread?
    /// `n` > 1 groups still being submitted, by group (guarded by `condition`).
    private var pendingGroups: [UInt64: [RequestState]] = [:]
    /// Retained KV of recent requests (guarded by `condition`).
    private let promptCache: PromptCache
    /// Whether requests reuse and leave KV in the prompt cache (their own `cachePrompt` permitting);
    /// set before `start`.
    public var promptCaching = true
    /// When a request may start from a retained cache that holds only part of its prompt (see
    /// `PartialPromptReuse`); set before `start`. Whole-prompt hits are always exact and always used.
    public var partialPromptReuse = PartialPromptReuse.whenExact
    /// Whether this model's prefill gives every position the same bits whatever the chunk it runs
    /// in (`probeExactPrefill`); nil until a partial reuse first comes up. Engine thread.
    public private(set) var exactPrefill: Bool?
    /// Counts each decode row's experts for requests that ask for it.
    private let expertRecorder: RequestExpertRecorder

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
        /// Tokens sampled so far (the cache holds `prompt + generatedTokens`, up to its length).
        var generatedTokens: [Int] = []
        /// Prompt tokens this sequence did not run (prompt cache or a shared prefill).
        var cachedTokens = 0
        /// Logits to sample the first token from instead of running the last prompt token
        /// (a whole-prompt cache hit, or a fork of a shared prefill).
        var pendingLogits: [Float]?
        /// The logits after the whole prompt, kept for the prompt cache.
        var promptLogits: [Float]?
        /// The linear-attention state after the whole prompt (a cache that cannot go back), for the prompt cache.
        var promptSnapshot: LinearAttentionState?
        /// Guarded by the lock: whether the prompt's logits exist (the prefill ended), and the
        /// `n` > 1 choices waiting to fork this sequence's cache when it does.
        var promptDone = false
        var followers: [RequestState] = []
        /// `[layer * experts + expert]` routing counts of the generated tokens (`recordExperts`).
        var expertCounts: [Int32] = []

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
        promptCache = PromptCache(maxEntries: max(4, 2 * limits.maxRunningSequences))
        expertRecorder = RequestExpertRecorder(layerCount: model.config.layerCount, expertCount: model.config.expertCount)
    }

    /// Bytes the prompt cache holds now, and its entries.
    public var promptCacheState: (bytes: Int, entries: Int) {
        condition.lock()
        defer { condition.unlock() }
        return (promptCache.byteCount, promptCache.entries.count)
    }

    /// Scheduler limits for `model` with `kvCacheBudgetBytes` of KV cache.
    /// `contextLength`: positions a sequence may reach (the model's trained context when nil or larger).
    public static func defaultLimits(for model: TransformerModel, kvCacheBudgetBytes: Int, maxRunningSequences: Int = 8,
                                     tokenBudgetPerStep: Int = 256, maxWaitingRequests: Int = 64,
                                     contextLength: Int? = nil) -> SchedulerLimits {
        let config = model.config
        let window = TransformerModel.kvWindow(config, precision: model.kvPrecision)
        return SchedulerLimits(
            maxRunningSequences: maxRunningSequences, tokenBudgetPerStep: tokenBudgetPerStep,
            kvCacheBudgetBytes: kvCacheBudgetBytes,
            kvBytesPerToken: model.kvBytesPerToken,
            maxWaitingRequests: maxWaitingRequests,
            contextLength: min(contextLength ?? config.maxPositionEmbeddings, config.maxPositionEmbeddings),
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
        if let shared = request.sharedPrefill, shared.size > 1 {
            // Held until the whole group is here; then the first live member is scheduled and
            // the others wait for its prefill (`promptEnded`). The scheduler's checks run on the
            // leader when the last member arrives (a refusal fails that submission, and the
            // caller cancels the members it was given).
            let state = RequestState(id: id, request: request, onEvent: onEvent, decode: decode)
            let members = (pendingGroups[shared.group] ?? []).filter { requests[$0.id] != nil } + [state]
            guard members.count >= shared.size else {
                pendingGroups[shared.group] = members
                requests[id] = state
                nextId += 1
                return id
            }
            pendingGroups[shared.group] = nil
            let leader = members[0]
            try scheduler.add(id: leader.id, prompt: leader.request.prompt, maxTokens: leader.request.maxTokens)
            leader.followers = members.dropFirst().filter { $0.request.prompt == leader.request.prompt }
            for other in members.dropFirst() where other.request.prompt != leader.request.prompt {
                try? scheduler.add(id: other.id, prompt: other.request.prompt, maxTokens: other.request.maxTokens)
            }
            requests[id] = state
            nextId += 1
            condition.signal()
            return id
        }
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
            if partialPromptReuse == .whenExact, exactPrefill == nil, promptCaching, !promptCache.entries.isEmpty,
               scheduler.waitingCount > 0 {
                condition.unlock()
                let exact = probeExactPrefill()
                condition.lock()
                exactPrefill = exact
            }
            evictPromptCache()
            let plan = attachCachedPrefixes(scheduler.schedule())
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
            endSequence(state)
            statistics.cancelledRequests += 1
            releaseFollowers(of: state, into: &events)
            retainInPromptCache(state)
            events.append(state.onEvent, .finished(reason: .cancelled, text: "", usage: usage(state), timings: timings(state, end: now())))
        }
        pendingCancellations.removeAll()
        if !pendingGroups.isEmpty { pendingGroups = pendingGroups.filter { $0.value.contains { requests[$0.id] != nil } } }
        condition.broadcast()
        return events
    }

    /// Events collected under the lock and delivered after it is released, so that a callback
    /// that calls back into the engine (`cancel`, `submit`, `currentStatistics`) cannot deadlock.
    private struct PendingEvents {
        fileprivate var events: [(@Sendable (GenerationEvent) -> Void, GenerationEvent)] = []
        mutating func append(_ onEvent: @escaping @Sendable (GenerationEvent) -> Void, _ event: GenerationEvent) {
            events.append((onEvent, event))
        }
        func deliver() { for (onEvent, event) in events { onEvent(event) } }
    }

    private func step(_ plan: StepPlan, states: [RequestState]) {
        let start = now()
        var inputs: [SequenceInput] = []
        var promptTokensRun = 0
        var recorded: [Int] = [] // indexes into `states` of the rows the expert recorder counts
        for (chunk, state) in zip(plan.chunks, states) {
            if state.cache == nil { state.cache = model.makeCache() }
            if state.prefillStart == nil { state.prefillStart = start }
            // A sequence with its first token's logits at hand runs nothing this step.
            guard state.pendingLogits == nil else { continue }
            if chunk.isPrompt { promptTokensRun += chunk.tokens.count }
            inputs.append(SequenceInput(cache: state.cache!, tokens: chunk.tokens))
            recorded.append(state.request.recordExperts && !chunk.isPrompt ? recorded.count : -1)
        }
        let outputs: StepLogits? // in the model's workspace: read before the next step
        do {
            outputs = try expertRecorder.recording(model, rows: recorded.map { $0 >= 0 }, inputs: inputs) {
                try inputs.isEmpty ? nil : model.forwardStep(inputs)
            }
        } catch {
            // A failed read of an expert fails the requests of this step, not the process.
            var failed = PendingEvents()
            condition.lock()
            for state in states where requests.removeValue(forKey: state.id) != nil {
                scheduler.finish(state.id)
                endSequence(state)
                statistics.failedRequests += 1
                failed.append(state.onEvent, .failed(message: "\(error)"))
                releaseFollowers(of: state, into: &failed)
            }
            condition.broadcast()
            condition.unlock()
            failed.deliver()
            return
        }
        let end = now()
        // The recorder's counts, per sequence that asked (in `inputs` order).
        var inputIndex = 0
        for state in states where state.pendingLogits == nil {
            if recorded[inputIndex] >= 0 { expertRecorder.add(row: inputIndex, into: &state.expertCounts) }
            inputIndex += 1
        }
        // Sequences that ran nothing take their pending logits in their place.
        var computedIndex = 0
        let rows: [StepRowLogits] = states.map { state in
            if let pending = state.pendingLogits { state.pendingLogits = nil; return .pending(pending) }
            defer { computedIndex += 1 }
            return .computed(outputs![computedIndex])
        }

        var sampled: [UInt64: Int] = [:]
        var finished: [(RequestState, FinishReason, String)] = []
        var promptsDone: [(RequestState, [Float])] = []
        for ((chunk, state), row) in zip(zip(plan.chunks, states), rows) where chunk.samplesNextToken {
            if state.firstTokenTime == nil { state.firstTokenTime = end }
            let request = state.request
            let topCount = request.logprobs ? request.topLogprobs : 0
            let sampledChoice: (token: Int, logprob: TokenLogprob?, top: [TokenLogprob])? = row.withLogits { logits in
                if chunk.isPrompt { promptsDone.append((state, Array(logits))) }
                // Copied only when a bias or a grammar changes them.
                guard !request.logitBias.isEmpty || state.constraint != nil else {
                    return state.sampler.sample(logits, topCount: topCount, logprobs: request.logprobs)
                }
                var changed = Array(logits)
                for (token, bias) in request.logitBias where token >= 0 && token < changed.count { changed[token] += bias }
                // The grammar allows no token at all (it cannot happen with a grammar that has no dead ends):
                // stop rather than sample outside it.
                if let constraint = state.constraint, !constraint.constrain(&changed) { return nil }
                return state.sampler.sample(changed, topCount: topCount, logprobs: request.logprobs)
            }
            guard let choice = sampledChoice else {
                finished.append((state, .stop, state.assembler.finish()))
                continue
            }
            state.constraint?.accept(choice.token)
            state.generated += 1
            state.generatedTokens.append(choice.token)
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
                                             cachedTokens: state.cache!.length, contextLength: scheduler.limits.contextLength) {
                finished.append((state, .length, state.assembler.finish()))
            }
        }

        var done = PendingEvents()
        condition.lock()
        statistics.steps += 1
        statistics.busySeconds += Double(end - start) / 1e9
        statistics.promptTokens += promptTokensRun
        statistics.generatedTokens += sampled.count
        for (state, logits) in promptsDone { promptEnded(state, logits: logits, events: &done) }
        scheduler.update(plan: plan, sampled: sampled)
        for (state, reason, text) in finished where requests.removeValue(forKey: state.id) != nil {
            scheduler.finish(state.id)
            endSequence(state)
            statistics.finishedRequests += 1
            retainInPromptCache(state)
            done.append(state.onEvent, .finished(reason: reason, text: text, usage: usage(state), timings: timings(state, end: end)))
        }
        condition.broadcast()
        condition.unlock()
        done.deliver()
    }

    private func usage(_ state: RequestState) -> Usage {
        var usage = Usage(promptTokens: state.request.prompt.count, completionTokens: state.generated)
        usage.cachedTokens = state.cachedTokens
        if state.request.recordExperts { usage.experts = expertRecorder.table(state.expertCounts) }
        return usage
    }

    private func timings(_ state: RequestState, end: UInt64) -> Timings {
        let prefillStart = state.prefillStart ?? end
        let firstToken = state.firstTokenTime ?? end
        var timings = Timings(promptN: state.request.prompt.count - state.cachedTokens, promptMs: Double(firstToken - prefillStart) / 1e6,
                              predictedN: state.generated, predictedMs: Double(end - firstToken) / 1e6)
        timings.cacheN = state.cachedTokens
        return timings
    }

    /// Tells the model's routing observers that `state`'s sequence runs no more steps (the
    /// expert cache's sequence-aware policy forgets its routing). Engine thread.
    private func endSequence(_ state: RequestState) {
        if let cache = state.cache { model.sequenceEnded(cache) }
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

/// When the engine reuses a retained cache holding only part of a prompt. The rest of the prompt
/// then runs as a chunk of another size than in an uncached run, which changes the result's bits
/// when the model's kernels pick their arithmetic by row count (f32 sgemm, bf16 with
/// `MOE_PREFILL_GEMM=sgemm` and Qwen3-Next's delta rule do; the bf16 `RowInvariantKernels` and the
/// integer-dot kernels do not).
public enum PartialPromptReuse: Sendable {
    /// Only when a probe found this model's prefill bit-exact across chunkings (`Engine.exactPrefill`):
    /// then a partial hit is bit-identical to an uncached run.
    case whenExact
    /// Always: the same tokens in practice, logprobs within float rounding where the kernels differ.
    case always
    /// Never: only whole-prompt hits.
    case never

    /// The configuration names (`prompt_cache_partial`): `exact`, `always`, `off`.
    public static let names = ["exact", "always", "off"]

    /// The choice a configuration name selects; nil for an unknown name.
    public init?(name: String) {
        switch name.lowercased() {
        case "exact": self = .whenExact
        case "always": self = .always
        case "off", "never": self = .never
        default: return nil
        }
    }

    /// Its configuration name.
    public var name: String {
        switch self {
        case .whenExact: return "exact"
        case .always: return "always"
        case .never: return "off"
        }
    }
}

// MARK: - Prompt cache and shared prefills (caller holds the lock; engine thread)

extension Engine {
    private var allowsPartialReuse: Bool {
        switch partialPromptReuse {
        case .always: return true
        case .never: return false
        case .whenExact: return exactPrefill == true
        }
    }

    /// Whether a prompt run as one chunk and run in pieces ends in the same logits, bit for bit:
    /// 80 tokens as one chunk (a step above the MoE block's 64-row threshold) against chunks of
    /// 1, 4, 19 and 56 tokens, the last beside another sequence's 3 tokens in the same step. The
    /// pieces cover the single-row GEMV (a decode step), the multi-row kernels, the prefill
    /// products below and above 64 rows and a neighbour in the step; the first rows' keys and
    /// values feed the last row's attention, so any row-count-dependent arithmetic anywhere in
    /// the model shows. Runs on the engine thread, once.
    private func probeExactPrefill() -> Bool {
        let vocab = model.config.vocabSize
        let length = min(80, model.config.maxPositionEmbeddings - 1)
        guard length >= 6 else { return false }
        let tokens = (0..<length).map { ($0 * 7919 + 13) % vocab }
        let wholeCache = model.makeCache(), split = model.makeCache(), neighbour = model.makeCache()
        // The probe's sequences end with it: their routing must not count as running in the
        // expert cache's sequence-aware policy, which would otherwise keep the probe's experts
        // over the next requests' for hundreds of steps (until the feeder found them stale).
        defer { for cache in [wholeCache, split, neighbour] { model.sequenceEnded(cache) } }
        do {
            let whole = try model.forward([SequenceInput(cache: wholeCache, tokens: tokens)])[0]
            var first = 0
            var last: [Float] = []
            for size in [1, 4, 19, length] where first < length {
                let piece = Array(tokens[first..<min(length, first + size)])
                first += piece.count
                var inputs = [SequenceInput(cache: split, tokens: piece)]
                if first == length { inputs.append(SequenceInput(cache: neighbour, tokens: [1, 2, 3].map { $0 % vocab })) }
                last = try model.forward(inputs)[0]
            }
            return whole.map(\.bitPattern) == last.map(\.bitPattern)
        } catch {
            return false
        }
    }

    /// Evicts retained prompt caches until they fit in what the KV budget leaves beside the
    /// running sequences' reservations, their prompt-end snapshots and the next admissions'.
    private func evictPromptCache() {
        promptCache.evict(toFit: promptCacheRoom)
    }

    /// Bytes of the KV budget the prompt cache may hold now.
    private var promptCacheRoom: Int {
        let snapshots = requests.values.reduce(0) { $0 + ($1.promptSnapshot?.byteCount ?? 0) }
        return scheduler.limits.kvCacheBudgetBytes - scheduler.reservedBytes - scheduler.pendingAdmissionBytes - snapshots
    }

    /// For each sequence `plan` admitted: starts it from a retained cache (a prompt-cache hit)
    /// or from its forked cache (an `n` > 1 choice), tells the scheduler the prefix is done, and
    /// plans again; returns the plan to run.
    private func attachCachedPrefixes(_ first: StepPlan) -> StepPlan {
        var plan = first
        var admitted = first.admitted
        while !admitted.isEmpty {
            var changed = false
            for id in admitted {
                guard let state = requests[id] else { continue }
                let prompt = state.request.prompt
                if state.cache != nil, state.pendingLogits != nil {
                    // A forked choice: its cache holds the whole prompt, its first logits are the leader's.
                    scheduler.skipCachedPrefix(id, count: prompt.count - 1)
                    changed = true
                } else if state.cache == nil, promptCaching, state.request.cachePrompt,
                          let hit = promptCache.take(for: prompt, allowPartial: allowsPartialReuse) {
                    state.cache = hit.cache
                    state.cachedTokens = hit.reused
                    statistics.cachedPromptTokens += hit.reused
                    statistics.promptCacheHits += 1
                    if let logits = hit.logits {
                        state.pendingLogits = logits
                        scheduler.skipCachedPrefix(id, count: prompt.count - 1)
                    } else {
                        scheduler.skipCachedPrefix(id, count: hit.reused)
                    }
                    changed = true
                }
            }
            guard changed else { break }
            // The skipped prefixes change the chunks (and free token budget for more admissions).
            let again = scheduler.schedule()
            admitted = again.admitted
            plan = StepPlan(chunks: again.chunks, admitted: plan.admitted + again.admitted)
        }
        return plan
    }

    /// `state`'s prompt has been run (its first token sampled from `logits`, the raw logits
    /// after the prompt): forks its cache for the choices waiting on it, and keeps the logits
    /// (and, for caches that cannot go back later, a snapshot) for the prompt cache.
    private func promptEnded(_ state: RequestState, logits: [Float], events: inout PendingEvents) {
        guard !state.promptDone, let cache = state.cache else { return }
        state.promptDone = true
        let followers = state.followers
        state.followers = []
        for follower in followers where requests[follower.id] != nil {
            follower.cache = cache.copy(length: cache.length)
            follower.pendingLogits = logits
            follower.cachedTokens = follower.request.prompt.count
            statistics.cachedPromptTokens += follower.cachedTokens
            enqueue(follower, events: &events)
        }
        guard promptCaching, state.request.cachePrompt else { return }
        if let linear = cache.linearState, !cache.windows.contains(where: { $0 != nil }) {
            // A linear state cannot go back: keep a snapshot of it (the attention layers' rows can
            // be truncated to this position later), retained with the whole cache at the end. It
            // takes its bytes from the prompt cache's share of the KV budget (evicting retained
            // caches), and is skipped when even an empty prompt cache leaves no room for it.
            state.promptLogits = logits
            promptCache.evict(toFit: promptCacheRoom - linear.byteCount)
            if promptCache.byteCount + linear.byteCount <= promptCacheRoom { state.promptSnapshot = linear.copy() }
        } else if !cache.supportsTruncation || cache.windows.contains(where: { $0 != nil }) {
            // A window may have moved on by the end: keep the prompt's state as it is now.
            promptCache.retain(tokens: state.request.prompt, cache: cache.copy(length: cache.length), logits: logits,
                               logitsPosition: cache.length)
            evictPromptCache()
        } else {
            state.promptLogits = logits
        }
    }

    /// Adds a parked choice to the scheduler, or fails it when the queue has no room.
    private func enqueue(_ follower: RequestState, events: inout PendingEvents) {
        do {
            try scheduler.add(id: follower.id, prompt: follower.request.prompt, maxTokens: follower.request.maxTokens)
        } catch {
            requests.removeValue(forKey: follower.id)
            statistics.failedRequests += 1
            events.append(follower.onEvent, .failed(message: "\(error)"))
        }
    }

    /// `state` ends before its prompt did: the choices waiting on it prefill on their own.
    private func releaseFollowers(of state: RequestState, into events: inout PendingEvents) {
        let followers = state.followers
        state.followers = []
        for follower in followers where requests[follower.id] != nil { enqueue(follower, events: &events) }
    }

    /// Keeps a finished or cancelled sequence's KV for later requests.
    private func retainInPromptCache(_ state: RequestState) {
        guard promptCaching, state.request.cachePrompt, let cache = state.cache, cache.length > 0 else { return }
        state.cache = nil
        let tokens = Array((state.request.prompt + state.generatedTokens).prefix(cache.length))
        guard tokens.count == cache.length else { return }
        promptCache.retain(tokens: tokens, cache: cache, logits: state.promptLogits, logitsPosition: state.request.prompt.count,
                           snapshot: state.promptSnapshot)
        state.promptSnapshot = nil
        evictPromptCache()
    }
}

/// One sequence's logits in a step: a row of the model's workspace, or logits kept from an earlier step
/// (a whole-prompt cache hit, a forked `n` choice).
private enum StepRowLogits {
    case computed(UnsafeBufferPointer<Float>)
    case pending([Float])

    func withLogits<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        switch self {
        case .computed(let row): return try body(row)
        case .pending(let values): return try values.withUnsafeBufferPointer(body)
        }
    }
}
