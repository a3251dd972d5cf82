/// Limits the scheduler plans within.
public struct SchedulerLimits: Sendable, Equatable {
    /// Sequences running at once.
    public var maxRunningSequences: Int
    /// Tokens in one step: every running decode contributes one, prompt chunks fill the rest.
    public var tokenBudgetPerStep: Int
    /// Bytes of KV cache the running sequences may reserve together.
    public var kvCacheBudgetBytes: Int
    /// KV-cache bytes one position costs (all layers, keys and values).
    public var kvBytesPerToken: Int
    /// Requests allowed to wait for admission; more are refused.
    public var maxWaitingRequests: Int
    /// The model's context length.
    public var contextLength: Int
    /// Fixed bytes each sequence holds whatever its length (a hybrid model's recurrent and conv
    /// state), reserved from the KV budget at admission with its positions.
    public var sequenceStateBytes: Int = 0
    /// Sliding-window layers' KV (gpt-oss): `kvWindowBytesPerToken` per position, for at most
    /// `kvWindowPositions` positions of a sequence; 0 without such layers.
    public var kvWindowPositions: Int
    public var kvWindowBytesPerToken: Int

    public init(maxRunningSequences: Int, tokenBudgetPerStep: Int, kvCacheBudgetBytes: Int, kvBytesPerToken: Int,
                maxWaitingRequests: Int, contextLength: Int, sequenceStateBytes: Int = 0,
                kvWindowPositions: Int = 0, kvWindowBytesPerToken: Int = 0) {
        self.sequenceStateBytes = sequenceStateBytes
        self.kvWindowPositions = kvWindowPositions
        self.kvWindowBytesPerToken = kvWindowBytesPerToken
        self.maxRunningSequences = maxRunningSequences
        self.tokenBudgetPerStep = tokenBudgetPerStep
        self.kvCacheBudgetBytes = kvCacheBudgetBytes
        self.kvBytesPerToken = kvBytesPerToken
        self.maxWaitingRequests = maxWaitingRequests
        self.contextLength = contextLength
    }
}

/// One sequence's share of a planned step.
public struct ScheduledChunk: Sendable, Equatable {
    /// The sequence.
    public var sequenceId: UInt64
    /// Tokens to run this step: a slice of the prompt, or the last sampled token.
    public var tokens: [Int]
    /// Whether this chunk ends the prompt (or is a decode), so its last logits are sampled.
    public var samplesNextToken: Bool
    /// Whether the tokens are prompt tokens (prefill) rather than a decode input.
    public var isPrompt: Bool
}

/// What to run in one step.
public struct StepPlan: Sendable, Equatable {
    public var chunks: [ScheduledChunk]
    /// Sequences admitted from the waiting queue by this plan.
    public var admitted: [UInt64]
    public var isEmpty: Bool { chunks.isEmpty }
    public var tokenCount: Int { chunks.reduce(0) { $0 + $1.tokens.count } }
}

/// Continuous-batching bookkeeping, with no I/O and no threads (vLLM v1 style:
/// `schedule() -> plan`, then `update` with what the step produced).
///
/// Admission reserves KV-cache bytes for the whole request (prompt + max tokens), so a running
/// sequence never runs out of cache and nothing has to be preempted; a request that could
/// never fit is refused when it arrives, with the numbers.
public struct Scheduler: Sendable {
    /// What a request needs to be scheduled.
    struct Sequence: Sendable {
        let id: UInt64
        let prompt: [Int]
        let maxTokens: Int
        /// Prompt tokens already run.
        var prefilled = 0
        /// Tokens sampled so far; the last one is the next decode input.
        var generated: [Int] = []
        var reservedBytes = 0

        var inPrefill: Bool { prefilled < prompt.count }
    }

    public let limits: SchedulerLimits
    private(set) var waiting: [Sequence] = []
    private(set) var running: [Sequence] = []
    /// KV-cache bytes reserved by running sequences.
    public private(set) var reservedBytes = 0

    public init(limits: SchedulerLimits) { self.limits = limits }

    /// Requests waiting for admission.
    public var waitingCount: Int { waiting.count }
    /// Sequences admitted and not finished.
    public var runningCount: Int { running.count }
    /// Ids of the running sequences, in admission order.
    public var runningIds: [UInt64] { running.map(\.id) }

    /// KV bytes a request reserves.
    public func reservation(promptTokens: Int, maxTokens: Int) -> Int {
        let positions = min(promptTokens + maxTokens, limits.contextLength)
        return positions * limits.kvBytesPerToken + min(positions, limits.kvWindowPositions) * limits.kvWindowBytesPerToken
            + limits.sequenceStateBytes
    }

    /// Queues a request, or refuses it with the reason.
    public mutating func add(id: UInt64, prompt: [Int], maxTokens: Int) throws {
        guard !prompt.isEmpty else { throw SubmissionError(.invalid, "the prompt is empty") }
        guard maxTokens >= 1 else { throw SubmissionError(.invalid, "max tokens must be at least 1") }
        guard prompt.count < limits.contextLength else {
            throw SubmissionError(.promptTooLong, "the prompt has \(prompt.count) tokens but the context length is \(limits.contextLength)")
        }
        let need = reservation(promptTokens: prompt.count, maxTokens: maxTokens)
        guard need <= limits.kvCacheBudgetBytes else {
            throw SubmissionError(.invalid, "this request needs \(need) bytes of KV cache (prompt \(prompt.count) + max tokens \(maxTokens)) but the KV budget is \(limits.kvCacheBudgetBytes) bytes; lower max_tokens")
        }
        guard waiting.count < limits.maxWaitingRequests else {
            throw SubmissionError(.queueFull, "the queue is full (\(limits.maxWaitingRequests) requests waiting)")
        }
        waiting.append(Sequence(id: id, prompt: prompt, maxTokens: maxTokens))
    }

    /// Admits what fits, then plans one step: one decode token for each running sequence past
    /// its prompt, and prompt chunks (oldest first) in the rest of the token budget.
    public mutating func schedule() -> StepPlan {
        var admitted: [UInt64] = []
        while let next = waiting.first, running.count < limits.maxRunningSequences {
            let need = reservation(promptTokens: next.prompt.count, maxTokens: next.maxTokens)
            guard reservedBytes + need <= limits.kvCacheBudgetBytes else { break } // FCFS: no overtaking
            var sequence = waiting.removeFirst()
            sequence.reservedBytes = need
            reservedBytes += need
            running.append(sequence)
            admitted.append(sequence.id)
        }

        var chunks: [ScheduledChunk] = []
        var budget = limits.tokenBudgetPerStep
        for sequence in running where !sequence.inPrefill && budget > 0 {
            chunks.append(ScheduledChunk(sequenceId: sequence.id, tokens: [sequence.generated.last!], samplesNextToken: true, isPrompt: false))
            budget -= 1
        }
        for sequence in running where sequence.inPrefill && budget > 0 {
            let take = min(budget, sequence.prompt.count - sequence.prefilled)
            let slice = Array(sequence.prompt[sequence.prefilled..<sequence.prefilled + take])
            chunks.append(ScheduledChunk(sequenceId: sequence.id, tokens: slice,
                                         samplesNextToken: sequence.prefilled + take == sequence.prompt.count, isPrompt: true))
            budget -= take
        }
        return StepPlan(chunks: chunks, admitted: admitted)
    }

    /// Records what a step did: prompt progress for every chunk, and the token sampled for
    /// each chunk that sampled one. Returns nothing; finishing is `finish(_:)`'s job.
    public mutating func update(plan: StepPlan, sampled: [UInt64: Int]) {
        for chunk in plan.chunks {
            guard let index = running.firstIndex(where: { $0.id == chunk.sequenceId }) else { continue }
            if running[index].inPrefill { running[index].prefilled += chunk.tokens.count }
            if let token = sampled[chunk.sequenceId] { running[index].generated.append(token) }
        }
    }

    /// Removes a finished or cancelled sequence (running or waiting) and frees its KV reservation.
    public mutating func finish(_ id: UInt64) {
        if let index = running.firstIndex(where: { $0.id == id }) {
            reservedBytes -= running[index].reservedBytes
            running.remove(at: index)
        } else {
            waiting.removeAll { $0.id == id }
        }
    }

    /// Whether a sequence that has sampled `generated` tokens and holds `cachedTokens` positions
    /// in its KV cache must stop for length: it reached its `maxTokens`, or the next decode
    /// input would not fit in the context (`cachedTokens + 1` positions).
    public static func reachedLimit(generated: Int, maxTokens: Int, cachedTokens: Int, contextLength: Int) -> Bool {
        generated >= maxTokens || cachedTokens + 1 >= contextLength
    }

    /// Whether the sequence is known (waiting or running).
    public func contains(_ id: UInt64) -> Bool {
        running.contains { $0.id == id } || waiting.contains { $0.id == id }
    }

    /// Marks the first `count` prompt tokens of running sequence `id` as already in its KV cache
    /// (a prompt-cache hit or an `n` > 1 fork): the next plan prefills from there. Only before the
    /// sequence's first chunk ran, and at least one prompt token is left to plan.
    public mutating func skipCachedPrefix(_ id: UInt64, count: Int) {
        guard let index = running.firstIndex(where: { $0.id == id }) else { return }
        precondition(running[index].prefilled == 0 && count < running[index].prompt.count, "a cached prefix is set before prefill and leaves one token")
        running[index].prefilled = count
    }

    /// KV bytes the waiting requests that could be admitted next (FCFS, up to the free running
    /// slots) would reserve: what the prompt cache must leave free of the budget.
    public var pendingAdmissionBytes: Int {
        waiting.prefix(max(0, limits.maxRunningSequences - running.count))
            .reduce(0) { $0 + reservation(promptTokens: $1.prompt.count, maxTokens: $1.maxTokens) }
    }
}
