/// How the next token is chosen. Defaults are neutral: no penalty, no truncation.
public struct SamplingParameters: Sendable, Equatable, Codable {
    /// 0 means greedy.
    public var temperature: Float = 1
    /// Keep only the k most likely tokens; 0 disables.
    public var topK: Int = 0
    /// Keep the smallest set of tokens whose probability reaches p; 1 disables.
    public var topP: Float = 1
    /// Drop tokens whose probability is below minP × the top probability; 0 disables.
    public var minP: Float = 0
    /// Divides positive (multiplies negative) logits of tokens already seen; 1 disables.
    public var repetitionPenalty: Float = 1
    /// Subtracted once from the logit of every token already generated.
    public var presencePenalty: Float = 0
    /// Subtracted per occurrence from the logit of every token already generated.
    public var frequencyPenalty: Float = 0
    /// Seed of this request's own random stream: the same seed gives the same tokens whatever
    /// else the server is doing. nil draws a fresh seed.
    public var seed: UInt64?

    public init() {}
}

/// One completion request as the engine sees it: token ids in, tokens and text out.
public struct GenerationRequest: Sendable {
    /// Prompt token ids (already templated and tokenized).
    public var prompt: [Int]
    /// Upper bound on generated tokens.
    public var maxTokens: Int
    /// Sampling settings.
    public var sampling: SamplingParameters
    /// Text that ends generation; matched across token boundaries and never emitted.
    public var stopStrings: [String]
    /// Stop when one of these ids is generated (the model's end-of-sequence ids by default).
    public var stopTokenIds: Set<Int>
    /// Also report the log-probabilities of the chosen token and of the `topLogprobs` most likely.
    public var logprobs: Bool
    /// How many alternatives to report per position when `logprobs` is set.
    public var topLogprobs: Int
    /// Added to a token's logit before sampling (OpenAI `logit_bias`; -infinity bans the token).
    public var logitBias: [Int: Float] = [:]
    /// Restricts which tokens may come next (a grammar or JSON schema); nil: unconstrained.
    public var constraint: TokenConstraintFactory? = nil
    /// Whether this request may start from a retained prompt cache and leave its KV for later
    /// requests (llama-server's `cache_prompt`; the output is the same either way, see `PromptCache`).
    public var cachePrompt = true
    /// The `n` > 1 choices of one request: `size` requests with the same prompt and `group`. The
    /// engine holds them until all `size` have been submitted, prefills the first, and starts the
    /// others from copies of its KV cache, sampling their first tokens from the same
    /// last-prompt logits, instead of prefilling the prompt again for each.
    public var sharedPrefill: SharedPrefill? = nil
    /// Record which experts this request's generated tokens were routed to (`Usage.experts`).
    public var recordExperts = false

    public init(prompt: [Int], maxTokens: Int, sampling: SamplingParameters = SamplingParameters(),
                stopStrings: [String] = [], stopTokenIds: Set<Int> = [], logprobs: Bool = false, topLogprobs: Int = 0) {
        self.prompt = prompt
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopStrings = stopStrings
        self.stopTokenIds = stopTokenIds
        self.logprobs = logprobs
        self.topLogprobs = topLogprobs
    }
}

/// A group of requests sharing one prefill (`GenerationRequest.sharedPrefill`).
public struct SharedPrefill: Sendable, Equatable {
    /// Any value the group's members share and no other request uses.
    public var group: UInt64
    /// How many requests the group has.
    public var size: Int
    public init(group: UInt64, size: Int) { self.group = group; self.size = size }
}

/// Why a generation ended.
public enum FinishReason: String, Sendable, Codable {
    /// A stop string or end-of-sequence token.
    case stop
    /// `maxTokens` reached, or the context is full.
    case length
    /// Cancelled by the client (disconnect) or by shutdown.
    case cancelled
    /// Failed; see the error event.
    case error
}

/// Token counts of a finished request.
public struct Usage: Sendable, Codable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    /// Prompt tokens whose KV came from the prompt cache or a shared `n` > 1 prefill instead of a forward pass.
    public var cachedTokens = 0
    /// With `GenerationRequest.recordExperts`: `[layer][expert]` how many of the generated
    /// tokens (as decode inputs) were routed to each expert; empty otherwise.
    public var experts: [[Int32]] = []
    public var totalTokens: Int { promptTokens + completionTokens }

    public init(promptTokens: Int, completionTokens: Int) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
    }
}

/// Timings as llama.cpp's server reports them.
public struct Timings: Sendable, Codable, Equatable {
    public var promptN: Int
    public var promptMs: Double
    public var promptPerSecond: Double
    public var predictedN: Int
    public var predictedMs: Double
    public var predictedPerSecond: Double
    /// Prompt tokens taken from the prompt cache (llama.cpp's `cache_n`); `promptN` excludes them.
    public var cacheN = 0

    enum CodingKeys: String, CodingKey {
        case cacheN = "cache_n"
        case promptN = "prompt_n", promptMs = "prompt_ms", promptPerSecond = "prompt_per_second"
        case predictedN = "predicted_n", predictedMs = "predicted_ms", predictedPerSecond = "predicted_per_second"
    }

    public init(promptN: Int, promptMs: Double, predictedN: Int, predictedMs: Double) {
        self.promptN = promptN
        self.promptMs = promptMs
        self.promptPerSecond = promptMs > 0 ? Double(promptN) * 1000 / promptMs : 0
        self.predictedN = predictedN
        self.predictedMs = predictedMs
        self.predictedPerSecond = predictedMs > 0 ? Double(predictedN) * 1000 / predictedMs : 0
    }
}

/// Log-probability of one candidate token.
public struct TokenLogprob: Sendable, Codable, Equatable {
    public var token: Int
    public var logprob: Float
    public init(token: Int, logprob: Float) { self.token = token; self.logprob = logprob }
}

/// What a running request reports, in order: zero or more `.token`, then exactly one of
/// `.finished` or `.failed`.
public enum GenerationEvent: Sendable {
    /// A generated token and the text it completes (possibly empty while a UTF-8 sequence or a
    /// possible stop string is held back).
    case token(id: Int, text: String, logprob: TokenLogprob?, topLogprobs: [TokenLogprob])
    /// Normal end; `text` is any held-back text released at the end.
    case finished(reason: FinishReason, text: String, usage: Usage, timings: Timings)
    /// The request failed (for example an expert could not be read); nothing more follows.
    case failed(message: String)
}

/// Why a request was not admitted.
public struct SubmissionError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable { case invalid, promptTooLong, queueFull, shuttingDown }
    public let kind: Kind
    public let description: String
    public init(_ kind: Kind, _ description: String) { self.kind = kind; self.description = description }
}

/// What the HTTP layer needs from the engine. Thread-safe; `onEvent` is called on the engine
/// thread and must not block (the server hands events to its loop with `uv_async_send`).
public protocol GenerationService: AnyObject, Sendable {
    /// Admits a request or throws a `SubmissionError`; returns its id.
    func submit(_ request: GenerationRequest, onEvent: @escaping @Sendable (GenerationEvent) -> Void) throws -> UInt64
    /// Cancels request `id` (unknown or finished ids are ignored). Its last event is
    /// `.finished(reason: .cancelled, ...)`, delivered within one engine step.
    func cancel(_ id: UInt64)
}
