/// A snapshot of the engine and expert cache for the dashboard (`GET /v1/stats`).
/// All fields are optional in spirit: zero or empty when the engine does not know them.
public struct EngineStats: Sendable {
    /// Decode tokens per second over the last few seconds.
    public var decodeTokensPerSecond: Double = 0
    /// Prompt (prefill) tokens per second over the last few seconds.
    public var promptTokensPerSecond: Double = 0
    /// Expert cache hit rate over the last few seconds, 0...1.
    public var cacheHitRate: Double = 0
    /// Running sequences.
    public var runningSequences: Int = 0
    /// Requests waiting to be scheduled.
    public var queuedRequests: Int = 0
    /// Cache bytes in use.
    public var cacheBytesUsed: Int = 0
    /// Cache byte budget.
    public var cacheBytesBudget: Int = 0
    /// Resident set size of the process.
    public var residentBytes: Int = 0
    /// `[layer][expert]` how often each expert was routed to recently (any scale; the page normalises).
    public var expertUsage: [[Double]] = []
    /// `[layer][expert]` whether each expert is resident in the cache now.
    public var expertResident: [[Bool]] = []

    /// An empty snapshot.
    public init() {}

    /// As JSON for the dashboard.
    public var json: JSON {
        .object([
            ("decode_tokens_per_second", .double(decodeTokensPerSecond)),
            ("prompt_tokens_per_second", .double(promptTokensPerSecond)),
            ("cache_hit_rate", .double(cacheHitRate)),
            ("running_sequences", .int(runningSequences)),
            ("queued_requests", .int(queuedRequests)),
            ("cache_bytes_used", .int(cacheBytesUsed)),
            ("cache_bytes_budget", .int(cacheBytesBudget)),
            ("resident_bytes", .int(residentBytes)),
            ("expert_usage", .array(expertUsage.map { .array($0.map { .double($0) }) })),
            ("expert_resident", .array(expertResident.map { .array($0.map { .bool($0) }) })),
        ])
    }
}

/// Implemented by the engine so the dashboard and `/v1/stats` can show live numbers.
/// Called on the event loop: must return quickly (copy counters under a lock, no computing).
public protocol StatsProvider: Sendable {
    /// The current snapshot.
    func currentStats() -> EngineStats
}

/// One running or waiting sequence as `/slots` shows it (llama-server's slot state).
public struct SlotState: Sendable {
    /// The engine's request id.
    public var id: UInt64
    /// Still waiting for admission.
    public var waiting: Bool
    /// Prompt tokens, and how many of them have run.
    public var promptTokens: Int
    public var prefilledTokens: Int
    /// Tokens generated so far, and the request's limit.
    public var generatedTokens: Int
    public var maxTokens: Int
    /// A state.
    public init(id: UInt64, waiting: Bool, promptTokens: Int, prefilledTokens: Int, generatedTokens: Int, maxTokens: Int) {
        self.id = id
        self.waiting = waiting
        self.promptTokens = promptTokens
        self.prefilledTokens = prefilledTokens
        self.generatedTokens = generatedTokens
        self.maxTokens = maxTokens
    }
}

/// Implemented by a stats provider that can list the engine's sequences (`GET /slots`).
public protocol SlotProvider: Sendable {
    /// Every sequence the engine holds, running first.
    func slots() -> [SlotState]
}
