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

    static func openAICommon(_ f: RequestFields) throws -> (stream: Bool, includeUsage: Bool, stop: [String]) {
        if let n = try f.int("n"), n != 1 { throw APIError.invalidRequest("field 'n': only n=1 is supported") }
        let stream = try f.bool("stream") ?? false
        let includeUsage = try f.object("stream_options")?.bool("include_usage") ?? false
        let stop = try f.strings("stop") ?? []
        if stop.count > 4 { throw APIError.invalidRequest("field 'stop' may hold at most 4 strings") }
        return (stream, includeUsage, stop)
    }

    static func parseOpenAICompletion(_ f: RequestFields, codec: PromptCodec) throws -> CompletionJob {
        let model = try f.string("model") ?? codec.modelName
        let common = try openAICommon(f)
        if try f.bool("echo") == true { throw APIError.invalidRequest("field 'echo' is not supported") }
        let sampling = try openAISampling(f)
        let logprobs = try f.int("logprobs", in: 0...20)
        let prompt = try promptTokens(f, key: "prompt", codec: codec, allowBatch: true)
        // OpenAI's default for /v1/completions is 16 tokens.
        let maxTokens = try fit(prompt: prompt, maxTokens: try f.int("max_tokens", in: 1...Int.max) ?? 16, field: "max_tokens", codec: codec)
        let request = GenerationRequest(prompt: prompt, maxTokens: maxTokens, sampling: sampling, stopStrings: common.stop,
                                        stopTokenIds: codec.stopTokenIds, logprobs: logprobs != nil, topLogprobs: logprobs ?? 0)
        return CompletionJob(flavor: .openAICompletion, request: request, stream: common.stream,
                             includeUsage: common.includeUsage, model: model)
    }

    static func parseOpenAIChat(_ f: RequestFields, codec: PromptCodec) throws -> CompletionJob {
        let model = try f.string("model") ?? codec.modelName
        let common = try openAICommon(f)
        let sampling = try openAISampling(f)
        guard let messagesValue = f.value("messages") else { throw APIError.invalidRequest("field 'messages' is required") }
        guard let items = messagesValue.arrayValue, !items.isEmpty else {
            throw APIError.invalidRequest("field 'messages' must be a non-empty array of messages")
        }
        var turns: [ChatTurn] = []
        for (i, item) in items.enumerated() {
            guard case .object = item else { throw APIError.invalidRequest("field 'messages[\(i)]' must be an object") }
            let m = RequestFields(object: item, path: "messages[\(i)]")
            guard let role = try m.string("role") else { throw APIError.invalidRequest("field 'messages[\(i)].role' is required") }
            var content = ""
            if let v = m.value("content") {
                if let s = v.stringValue { content = s } else if let parts = v.arrayValue {
                    // Content parts: only text is meaningful to a text model.
                    for (j, part) in parts.enumerated() {
                        let p = RequestFields(object: part, path: "messages[\(i)].content[\(j)]")
                        guard case .object = part else { throw APIError.invalidRequest("field '\(p.path)' must be an object") }
                        guard try p.string("type") == "text" else {
                            throw APIError.invalidRequest("field '\(p.path).type': only 'text' content parts are supported")
                        }
                        content += try p.string("text") ?? ""
                    }
                } else {
                    throw m.wrongType("content", "a string or an array of content parts")
                }
            }
            turns.append(ChatTurn(role: role, content: content))
        }
        try checkPromptBytes(turns.reduce(0) { $0 + $1.content.utf8.count }, codec: codec)
        let rendered: String
        do { rendered = try codec.renderChat(turns) } catch let e as APIError { throw e } catch {
            throw APIError.invalidRequest("field 'messages': the chat template failed: \(error)")
        }
        // The template already holds BOS and the other special tokens as text.
        let prompt = codec.encode(rendered, addSpecialTokens: false)
        let requested = try f.int("max_completion_tokens", in: 1...Int.max) ?? f.int("max_tokens", in: 1...Int.max)
        let maxTokens = try fit(prompt: prompt, maxTokens: requested, field: "max_tokens", codec: codec)
        let wantLogprobs = try f.bool("logprobs") ?? false
        let top = try f.int("top_logprobs", in: 0...20) ?? 0
        let request = GenerationRequest(prompt: prompt, maxTokens: maxTokens, sampling: sampling, stopStrings: common.stop,
                                        stopTokenIds: codec.stopTokenIds, logprobs: wantLogprobs, topLogprobs: top)
        return CompletionJob(flavor: .openAIChat, request: request, stream: common.stream,
                             includeUsage: common.includeUsage, model: model)
    }

    static func parseLlamaCompletion(_ f: RequestFields, codec: PromptCodec) throws -> CompletionJob {
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
        let prompt = try promptTokens(f, key: "prompt", codec: codec, allowBatch: false)
        let nPredict = try f.int("n_predict", in: -1...Int.max) ?? -1
        let maxTokens = try fit(prompt: prompt, maxTokens: nPredict < 0 ? nil : max(nPredict, 0), field: "n_predict", codec: codec)
        let request = GenerationRequest(prompt: prompt, maxTokens: maxTokens, sampling: s, stopStrings: stop,
                                        stopTokenIds: codec.stopTokenIds, logprobs: nProbs > 0, topLogprobs: nProbs)
        return CompletionJob(flavor: .llamaCompletion, request: request, stream: stream, includeUsage: false, model: codec.modelName)
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
