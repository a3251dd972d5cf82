import Grammar
import InferenceEngine

/// Which API shape a generation request came in, and so which shape its response takes.
public enum APIFlavor: Sendable, Equatable {
    /// `POST /v1/completions`.
    case openAICompletion
    /// `POST /v1/chat/completions`.
    case openAIChat
    /// llama.cpp's `POST /completion`.
    case llamaCompletion
}

/// A validated generation request: what to submit to the engine and how to answer.
public struct CompletionJob: Sendable {
    /// The response shape.
    public var flavor: APIFlavor
    /// What the engine runs.
    public var request: GenerationRequest
    /// Server-sent events instead of one JSON body.
    public var stream: Bool
    /// OpenAI `stream_options.include_usage`: a final chunk with empty `choices` and the usage.
    public var includeUsage: Bool
    /// Model name echoed in responses.
    public var model: String
    /// The grammar the output must follow (`response_format`, `json_schema`, `grammar`, or a tool
    /// call forced by `tool_choice`); the router turns it into the request's token constraint.
    public var grammar: Grammar? = nil
    /// `echo`: the prompt text put before the completion.
    public var echoText: String? = nil
    /// The tools offered to the model (chat): their calls are parsed out of the text.
    public var tools: ToolSet? = nil
    /// Completions to generate for the prompt (`n`), each its own sequence.
    public var choices: Int = 1
    /// Whether the prompt was built from a prefix and a suffix (`suffix`, `/infill`).
    public var fillInTheMiddle = false

    /// Parses and validates a request body of `flavor`; tokenizes with `codec`. Prompt text of
    /// more than `maxPromptBytes` UTF-8 bytes is refused before it is tokenized.
    /// Throws `APIError` (400) naming the field at fault.
    public static func parse(_ body: [UInt8], flavor: APIFlavor, codec: PromptCodec, maxPromptBytes: Int = .max) throws -> CompletionJob {
        let fields = try RequestFields(body: body)
        let guarded = BoundedCodec(codec: codec, maxPromptBytes: maxPromptBytes)
        switch flavor {
        case .openAICompletion: return try parseOpenAICompletion(fields, codec: guarded)
        case .openAIChat: return try parseOpenAIChat(fields, codec: guarded)
        case .llamaCompletion: return try parseLlamaCompletion(fields, codec: guarded)
        }
    }

    /// Parses a llama.cpp `/infill` body: `input_prefix`, `input_suffix` and an optional `prompt`
    /// put after the middle token, with the completion fields; a 400 when the model has no
    /// fill-in-the-middle tokens.
    public static func parseInfill(_ body: [UInt8], codec: PromptCodec, maxPromptBytes: Int = .max) throws -> CompletionJob {
        let fields = try RequestFields(body: body)
        return try parseLlama(fields, codec: BoundedCodec(codec: codec, maxPromptBytes: maxPromptBytes), infill: true)
    }

    /// The error for prompt text that cannot fit the context, before tokenizing it.
    static func promptTooLarge(bytes: Int, limit: Int, codec: PromptCodec) -> APIError {
        APIError.invalidRequest("the prompt has \(bytes) bytes, more than the context length of \(codec.contextLength) tokens can hold (at most \(limit) bytes); shorten the prompt")
    }

    /// Checks prompt text against the byte bound, and a chat's contents before rendering.
    static func checkPromptBytes(_ bytes: Int, codec: PromptCodec) throws {
        guard let bounded = codec as? BoundedCodec, bytes > bounded.maxPromptBytes else { return }
        throw promptTooLarge(bytes: bytes, limit: bounded.maxPromptBytes, codec: bounded.codec)
    }

    /// A prompt given as text, token ids, or (OpenAI) a one-element batch of either.
    static func promptTokens(_ fields: RequestFields, key: String, codec: PromptCodec, allowBatch: Bool) throws -> [Int] {
        guard let value = fields.value(key) else { throw APIError.invalidRequest("field '\(key)' is required") }
        let expected = "a string or an array of token ids"
        if let text = value.stringValue {
            try checkPromptBytes(text.utf8.count, codec: codec)
            return codec.encode(text, addSpecialTokens: true)
        }
        guard let items = value.arrayValue else { throw fields.wrongType(key, expected) }
        if allowBatch, items.count == 1, let first = items.first {
            if let text = first.stringValue {
                try checkPromptBytes(text.utf8.count, codec: codec)
                return codec.encode(text, addSpecialTokens: true)
            }
            if let inner = first.arrayValue { return try tokenIds(inner, key: key, codec: codec) }
        }
        if allowBatch, items.count > 1, items.allSatisfy({ $0.stringValue != nil || $0.arrayValue != nil }) {
            throw APIError.invalidRequest("field '\(key)': batches of several prompts are not supported; send one request per prompt")
        }
        // llama.cpp also accepts a mix of strings and ids: ["text", 12, 34].
        try checkPromptBytes(items.reduce(0) { $0 + ($1.stringValue?.utf8.count ?? 0) }, codec: codec)
        var ids: [Int] = []
        for item in items {
            if let s = item.stringValue { ids += codec.encode(s, addSpecialTokens: ids.isEmpty) } else {
                ids += try tokenIds([item], key: key, codec: codec)
            }
        }
        return ids
    }

    static func tokenIds(_ items: [JSON], key: String, codec: PromptCodec) throws -> [Int] {
        try items.map {
            guard let id = $0.intValue else { throw APIError.invalidRequest("field '\(key)' must be a string or an array of token ids") }
            guard id >= 0, id < codec.vocabularySize else {
                throw APIError.invalidRequest("field '\(key)': token id \(id) is outside the vocabulary (0..<\(codec.vocabularySize))")
            }
            return id
        }
    }

    /// Rejects prompts that do not fit and clamps the generation budget to the context.
    static func fit(prompt: [Int], maxTokens: Int?, field: String, codec: PromptCodec) throws -> Int {
        let context = codec.contextLength
        guard !prompt.isEmpty else { throw APIError.invalidRequest("the prompt is empty") }
        guard prompt.count < context else {
            throw APIError.invalidRequest(
                "the prompt has \(prompt.count) tokens but the context length is \(context); shorten the prompt")
        }
        let room = context - prompt.count
        return min(maxTokens ?? room, room)
    }

    /// Sampling fields shared by the OpenAI routes (top_k, min_p, repetition_penalty are the
    /// extensions vLLM and llama.cpp accept too).
    static func openAISampling(_ f: RequestFields) throws -> SamplingParameters {
        var s = SamplingParameters()
        if let t = try f.double("temperature", in: 0...2) { s.temperature = Float(t) }
        if let p = try f.double("top_p", in: 0...1) { s.topP = Float(p) }
        if let k = try f.int("top_k", in: -1...1_000_000) { s.topK = max(0, k) }
        if let m = try f.double("min_p", in: 0...1) { s.minP = Float(m) }
        if let r = try f.double("repetition_penalty", in: 0.01...10) { s.repetitionPenalty = Float(r) }
        if let p = try f.double("presence_penalty", in: -2...2) { s.presencePenalty = Float(p) }
        if let p = try f.double("frequency_penalty", in: -2...2) { s.frequencyPenalty = Float(p) }
        if let seed = try f.int("seed") { s.seed = UInt64(bitPattern: Int64(seed)) }
        return s
    }

    /// `cache_prompt` (llama.cpp's, default true: reuse and leave KV in the prompt cache) and
    /// `return_experts` (this server's: report the experts the reply's tokens were routed to).
    static func applyCacheAndExperts(_ f: RequestFields, to request: inout GenerationRequest) throws {
        request.cachePrompt = try f.bool("cache_prompt") ?? true
        request.recordExperts = try f.bool("return_experts") ?? false
    }

    /// Most choices one request may ask for (`n`, `best_of`): each is a running sequence.
    static let maxChoices = 8

    static func openAICommon(_ f: RequestFields) throws -> (stream: Bool, includeUsage: Bool, stop: [String], n: Int) {
        let n = try f.int("n", in: 1...maxChoices) ?? 1
        if let bestOf = try f.int("best_of", in: 1...maxChoices), bestOf != n {
            throw APIError.invalidRequest("field 'best_of': only best_of equal to n is supported (no server-side ranking)")
        }
        let stream = try f.bool("stream") ?? false
        let options = try f.object("stream_options")
        try options?.rejectUnknown(["include_usage"])
        let includeUsage = try options?.bool("include_usage") ?? false
        let stop = try f.strings("stop") ?? []
        if stop.count > 4 { throw APIError.invalidRequest("field 'stop' may hold at most 4 strings") }
        return (stream, includeUsage, stop, n)
    }

    /// The fields `/v1/completions` honours; any other is refused (400) rather than ignored.
    static let completionFields: Set<String> = [
        "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "seed", "presence_penalty",
        "frequency_penalty", "repetition_penalty", "stream", "stream_options", "n", "best_of", "logprobs", "echo", "logit_bias",
        "suffix", "user", "response_format", "json_schema", "grammar", "ignore_eos", "cache_prompt", "return_experts",
    ]

    static func parseOpenAICompletion(_ f: RequestFields, codec: PromptCodec) throws -> CompletionJob {
        try f.rejectUnknown(completionFields, route: "/v1/completions")
        let model = try f.string("model") ?? codec.modelName
        let common = try openAICommon(f)
        let echo = try f.bool("echo") ?? false
        let sampling = try openAISampling(f)
        let logprobs = try f.int("logprobs", in: 0...20)
        if echo && logprobs != nil {
            throw APIError.invalidRequest("field 'echo' together with 'logprobs' is not supported (the prompt's log-probabilities are not computed)")
        }
        var prompt = try promptTokens(f, key: "prompt", codec: codec, allowBatch: true)
        var fim = false
        if let suffix = try f.string("suffix") {
            prompt = try fillInTheMiddle(prefix: prompt, suffix: codec.encode(suffix, addSpecialTokens: false), extra: [],
                                         field: "suffix", codec: codec)
            fim = true
        }
        // OpenAI's default for /v1/completions is 16 tokens.
        let maxTokens = try fit(prompt: prompt, maxTokens: try f.int("max_tokens", in: 1...Int.max) ?? 16, field: "max_tokens", codec: codec)
        var request = GenerationRequest(prompt: prompt, maxTokens: maxTokens, sampling: sampling, stopStrings: common.stop,
                                        stopTokenIds: try f.bool("ignore_eos") == true ? [] : codec.stopTokenIds,
                                        logprobs: logprobs != nil, topLogprobs: logprobs ?? 0)
        request.logitBias = try logitBias(f, codec: codec)
        try applyCacheAndExperts(f, to: &request)
        var job = CompletionJob(flavor: .openAICompletion, request: request, stream: common.stream,
                                includeUsage: common.includeUsage, model: model)
        job.grammar = try OutputConstraint.grammar(f)
        job.choices = common.n
        job.fillInTheMiddle = fim
        if echo {
            let value = f.value("prompt")
            job.echoText = value?.stringValue ?? value?.arrayValue?.first?.stringValue ?? codec.decode(prompt)
        }
        return job
    }

    /// Fill-in-the-middle prompt: `<fim_prefix>prefix<fim_suffix>suffix<fim_middle>extra`, with the
    /// model's own FIM tokens (Qwen/StarCoder spellings); a 400 naming `field` when it has none.
    static func fillInTheMiddle(prefix: [Int], suffix: [Int], extra: [Int], field: String, codec: PromptCodec) throws -> [Int] {
        let spellings = [("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
                         ("<|fim▁begin|>", "<|fim▁hole|>", "<|fim▁end|>")]
        for (p, s, m) in spellings {
            if let p = codec.lookup(p), let s = codec.lookup(s), let m = codec.lookup(m) {
                // Special tokens the tokenizer puts before any text (BOS) stay first.
                let lead = codec.encode("", addSpecialTokens: true)
                let hasLead = !lead.isEmpty && prefix.starts(with: lead)
                let head = hasLead ? Array(prefix.dropFirst(lead.count)) : prefix
                return (hasLead ? lead : []) + [p] + head + [s] + suffix + [m] + extra
            }
        }
        throw APIError.invalidRequest("field '\(field)': this model has no fill-in-the-middle tokens (<|fim_prefix|>, <|fim_suffix|>, <|fim_middle|>)")
    }

    /// OpenAI `logit_bias` (`{"token id": bias}`, bias in -100...100) or llama.cpp's
    /// (`[[id or text, bias or false], ...]`; false bans the token).
    static func logitBias(_ f: RequestFields, codec: PromptCodec) throws -> [Int: Float] {
        guard let value = f.value("logit_bias") else { return [:] }
        var bias: [Int: Float] = [:]
        func add(_ key: JSON, _ amount: JSON) throws {
            var ids: [Int] = []
            if let id = key.intValue { ids = [id] } else if let text = key.stringValue {
                if let id = Int(text) { ids = [id] } else { ids = codec.encode(text, addSpecialTokens: false) }
            } else { throw f.wrongType("logit_bias", "an object of token id → bias, or an array of [token, bias] pairs") }
            let b: Float
            if amount.boolValue == false { b = -.infinity } else if let d = amount.doubleValue, (-100...100).contains(d) { b = Float(d) } else {
                throw APIError.invalidRequest("field 'logit_bias': biases must be numbers between -100 and 100 (or false)")
            }
            for id in ids {
                guard id >= 0, id < codec.vocabularySize else {
                    throw APIError.invalidRequest("field 'logit_bias': token id \(id) is outside the vocabulary (0..<\(codec.vocabularySize))")
                }
                bias[id, default: 0] += b
            }
        }
        if let members = value.objectValue {
            for (key, amount) in members { try add(.string(key), amount) }
        } else if let pairs = value.arrayValue {
            for pair in pairs {
                guard let p = pair.arrayValue, p.count == 2 else { throw f.wrongType("logit_bias", "an array of [token, bias] pairs") }
                try add(p[0], p[1])
            }
        } else {
            throw f.wrongType("logit_bias", "an object of token id → bias, or an array of [token, bias] pairs")
        }
        return bias
    }

    /// The fields `/v1/chat/completions` honours; any other is refused (400) rather than ignored.
    static let chatFields: Set<String> = [
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "seed",
        "presence_penalty", "frequency_penalty", "repetition_penalty", "stream", "stream_options", "n", "logprobs", "top_logprobs",
        "logit_bias", "response_format", "json_schema", "grammar", "tools", "tool_choice", "parallel_tool_calls", "user",
        "chat_template_kwargs", "ignore_eos", "cache_prompt", "return_experts",
    ]

    static func parseOpenAIChat(_ f: RequestFields, codec: PromptCodec) throws -> CompletionJob {
        try f.rejectUnknown(chatFields, route: "/v1/chat/completions")
        let model = try f.string("model") ?? codec.modelName
        let common = try openAICommon(f)
        let sampling = try openAISampling(f)
        let chat = try ChatRequest.parse(f, codec: codec)
        // The template already holds BOS and the other special tokens as text.
        let prompt = codec.encode(chat.rendered, addSpecialTokens: false)
        let requested = try f.int("max_completion_tokens", in: 1...Int.max) ?? f.int("max_tokens", in: 1...Int.max)
        let maxTokens = try fit(prompt: prompt, maxTokens: requested, field: "max_tokens", codec: codec)
        let wantLogprobs = try f.bool("logprobs") ?? false
        let top = try f.int("top_logprobs", in: 0...20) ?? 0
        var request = GenerationRequest(prompt: prompt, maxTokens: maxTokens, sampling: sampling, stopStrings: common.stop,
                                        stopTokenIds: try f.bool("ignore_eos") == true ? [] : codec.stopTokenIds,
                                        logprobs: wantLogprobs, topLogprobs: top)
        request.logitBias = try logitBias(f, codec: codec)
        try applyCacheAndExperts(f, to: &request)
        var job = CompletionJob(flavor: .openAIChat, request: request, stream: common.stream,
                                includeUsage: common.includeUsage, model: model)
        job.grammar = try OutputConstraint.grammar(f)
        if let forced = chat.toolGrammar {
            if job.grammar != nil {
                throw APIError.invalidRequest("fields 'tool_choice' and 'response_format' both constrain the output; send one")
            }
            job.grammar = forced
        }
        job.tools = chat.tools
        job.choices = common.n
        return job
    }

    /// The fields llama.cpp's `/completion` takes that this server honours (`cache_prompt` is
    /// accepted: prompt reuse never changes the output).
    static let llamaFields: Set<String> = [
        "prompt", "n_predict", "temperature", "top_k", "top_p", "min_p", "seed", "stop", "stream", "repeat_penalty",
        "presence_penalty", "frequency_penalty", "n_probs", "grammar", "json_schema", "logit_bias", "ignore_eos", "cache_prompt",
        "model", "response_format", "return_experts",
    ]

    /// `/infill` takes the completion fields plus the prefix and suffix around the gap.
    static let infillFields: Set<String> = llamaFields.union(["input_prefix", "input_suffix"])

    static func parseLlamaCompletion(_ f: RequestFields, codec: PromptCodec) throws -> CompletionJob {
        try parseLlama(f, codec: codec, infill: false)
    }

    static func parseLlama(_ f: RequestFields, codec: PromptCodec, infill: Bool) throws -> CompletionJob {
        try f.rejectUnknown(infill ? infillFields : llamaFields, route: infill ? "/infill" : "/completion")
        // llama.cpp's defaults, so its clients get what they expect when they omit a field.
        var s = SamplingParameters()
        s.temperature = Float(try f.double("temperature", in: 0...100) ?? 0.8)
        s.topK = max(0, try f.int("top_k", in: -1...1_000_000) ?? 40)
        s.topP = Float(try f.double("top_p", in: 0...1) ?? 0.95)
        s.minP = Float(try f.double("min_p", in: 0...1) ?? 0.05)
        if let r = try f.double("repeat_penalty", in: 0...10) { s.repetitionPenalty = Float(r) }
        if let p = try f.double("presence_penalty", in: -2...2) { s.presencePenalty = Float(p) }
        if let p = try f.double("frequency_penalty", in: -2...2) { s.frequencyPenalty = Float(p) }
        if let seed = try f.int("seed"), seed >= 0 { s.seed = UInt64(seed) }  // -1 means random
        let stream = try f.bool("stream") ?? false
        let stop = try f.strings("stop") ?? []
        let nProbs = try f.int("n_probs", in: 0...20) ?? 0
        var prompt: [Int]
        if infill {
            let prefix = try f.string("input_prefix") ?? ""
            let suffix = try f.string("input_suffix") ?? ""
            try checkPromptBytes(prefix.utf8.count + suffix.utf8.count, codec: codec)
            let extra = f.value("prompt") == nil ? [] : try promptTokens(f, key: "prompt", codec: codec, allowBatch: false)
            let lead = codec.encode("", addSpecialTokens: true)
            let extraText = extra.starts(with: lead) && !lead.isEmpty ? Array(extra.dropFirst(lead.count)) : extra
            prompt = try fillInTheMiddle(prefix: codec.encode(prefix, addSpecialTokens: true), suffix: codec.encode(suffix, addSpecialTokens: false),
                                         extra: extraText, field: "input_suffix", codec: codec)
        } else {
            prompt = try promptTokens(f, key: "prompt", codec: codec, allowBatch: false)
        }
        let nPredict = try f.int("n_predict", in: -1...Int.max) ?? -1
        let maxTokens = try fit(prompt: prompt, maxTokens: nPredict < 0 ? nil : max(nPredict, 0), field: "n_predict", codec: codec)
        _ = try f.string("model")
        var request = GenerationRequest(prompt: prompt, maxTokens: maxTokens, sampling: s, stopStrings: stop,
                                        stopTokenIds: try f.bool("ignore_eos") == true ? [] : codec.stopTokenIds,
                                        logprobs: nProbs > 0, topLogprobs: nProbs)
        try applyCacheAndExperts(f, to: &request)
        request.logitBias = try logitBias(f, codec: codec)
        var job = CompletionJob(flavor: .llamaCompletion, request: request, stream: stream, includeUsage: false, model: codec.modelName)
        job.grammar = try OutputConstraint.grammar(f)
        job.fillInTheMiddle = infill
        return job
    }
}

/// A codec that remembers the prompt byte bound, so the parsing helpers can check text before
/// tokenizing it without another parameter on each.
struct BoundedCodec: PromptCodec {
    let codec: PromptCodec
    let maxPromptBytes: Int

    func encode(_ text: String, addSpecialTokens: Bool) -> [Int] { codec.encode(text, addSpecialTokens: addSpecialTokens) }
    func decode(_ ids: [Int]) -> String { codec.decode(ids) }
    func renderChat(_ messages: [ChatTurn]) throws -> String { try codec.renderChat(messages) }
    var contextLength: Int { codec.contextLength }
    var vocabularySize: Int { codec.vocabularySize }
    var modelName: String { codec.modelName }
    var stopTokenIds: Set<Int> { codec.stopTokenIds }
}
