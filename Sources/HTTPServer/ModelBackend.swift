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
    /// What `/v1/models` and `/props` report beyond the codec's figures.
    public var info: ModelInfo = ModelInfo()
    /// The vocabulary trie for grammar-constrained requests, built on first use.
    public let grammarVocabulary: GrammarVocabulary

    /// A backend. Decodes every token id once to find `maxBytesPerToken`.
    public init(service: any GenerationService, codec: any PromptCodec, stats: (any StatsProvider)? = nil) {
        self.service = service
        self.codec = codec
        self.stats = stats
        var longest = 1
        for id in 0..<codec.vocabularySize { longest = max(longest, codec.decode([id]).utf8.count) }
        maxBytesPerToken = longest
        grammarVocabulary = GrammarVocabulary(codec: codec)
    }

    /// Prompt text longer than this (in UTF-8 bytes) cannot fit the context.
    public var maxPromptBytes: Int {
        let (product, overflow) = codec.contextLength.multipliedReportingOverflow(by: maxBytesPerToken)
        return overflow ? Int.max : product
    }
}

/// Facts about the served model for `/v1/models` and `/props`.
public struct ModelInfo: Sendable {
    /// The model's path or directory.
    public var path: String = ""
    /// `Qwen3MoeForCausalLM`, ...
    public var architecture: String = ""
    /// How the experts are stored (`bf16`, `q4`, ...) and the dense weights' type.
    public var quantization: String = ""
    /// The context length the model was trained for (`max_position_embeddings`).
    public var trainedContextLength: Int = 0
    /// Sequences that may run at once (llama-server's slots).
    public var slots: Int = 0
    /// This build's version string.
    public var build: String = "moe-serve"
    /// Facts unknown.
    public init() {}
}
