/// One sequence the scheduler holds, as llama-server's `/slots` shows it.
public struct SequenceState: Sendable, Equatable {
    /// The request id.
    public var id: UInt64
    /// Waiting for admission (not yet running).
    public var waiting: Bool
    /// Prompt tokens, and how many have been run.
    public var promptTokens: Int
    public var prefilledTokens: Int
    /// Tokens sampled so far, and the limit.
    public var generatedTokens: Int
    public var maxTokens: Int
}

extension Scheduler {
    /// Running sequences (admission order), then waiting ones.
    public var sequenceStates: [SequenceState] {
        running.map { SequenceState(id: $0.id, waiting: false, promptTokens: $0.prompt.count, prefilledTokens: $0.prefilled,
                                    generatedTokens: $0.generated.count, maxTokens: $0.maxTokens) }
            + waiting.map { SequenceState(id: $0.id, waiting: true, promptTokens: $0.prompt.count, prefilledTokens: 0,
                                          generatedTokens: 0, maxTokens: $0.maxTokens) }
    }
}
