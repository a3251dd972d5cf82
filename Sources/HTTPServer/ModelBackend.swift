import InferenceEngine

/// What the server serves once the model is loaded: the engine, the tokenizer and, optionally,
/// live statistics. Until one is attached, `/health` answers 503 and generation routes 503.
public struct ModelBackend: Sendable {
    /// The engine.
    public var service: any GenerationService
    /// Tokenizer and chat template.
    public var codec: any PromptCodec
    /// Live numbers for the dashboard; nil shows zeros.
    public var stats: (any StatsProvider)?
    /// Bytes of text the longest token stands for: a prompt of more than `contextLength` times
    /// this many bytes has more tokens than the context holds, whatever the tokenizer does, so it
    /// is refused before it is tokenized (which costs ~30x its size in memory).
    public let maxBytesPerToken: Int

    /// A backend. Decodes every token id once to find `maxBytesPerToken`.
    public init(service: any GenerationService, codec: any PromptCodec, stats: (any StatsProvider)? = nil) {
        self.service = service
        self.codec = codec
        self.stats = stats
        var longest = 1
        for id in 0..<codec.vocabularySize { longest = max(longest, codec.decode([id]).utf8.count) }
        maxBytesPerToken = longest
    }

    /// Prompt text longer than this (in UTF-8 bytes) cannot fit the context.
    public var maxPromptBytes: Int {
        let (product, overflow) = codec.contextLength.multipliedReportingOverflow(by: maxBytesPerToken)
        return overflow ? Int.max : product
    }
}
