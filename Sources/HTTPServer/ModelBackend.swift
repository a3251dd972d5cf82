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

    /// A backend.
    public init(service: any GenerationService, codec: any PromptCodec, stats: (any StatsProvider)? = nil) {
        self.service = service
        self.codec = codec
        self.stats = stats
    }
}
