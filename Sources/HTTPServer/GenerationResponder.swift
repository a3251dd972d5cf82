import Foundation
import InferenceEngine

/// Turns one request's engine events into response parts in the shape of its API:
/// OpenAI chunks or JSON body, llama.cpp chunks or JSON body. Lives on the event loop;
/// its work per event is one small JSON serialization.
public final class GenerationResponder {
    let job: CompletionJob
    let id: String
    let created: Int
    private var text = ""
    private var generated = 0
    private var tokenIds: [Int] = []
    private var finished = false
    private var sentRole = false
    /// Text of one token id, for log-probability entries (a table lookup in a real tokenizer).
    private let tokenText: (Int) -> String
    /// Chat: one entry per token. Completions: parallel arrays, as the legacy API has them.
    private var chatLogprobs: [JSON] = []
    private var llamaProbabilities: [JSON] = []
    private var legacyTokens: [JSON] = [], legacyLogprobs: [JSON] = [], legacyTop: [JSON] = [], legacyOffsets: [JSON] = []

    /// A responder for `job`; `created` is the Unix time stamped on every chunk.
    /// - Parameter tokenText: decodes one token id, used only when the request asked for logprobs.
    public init(job: CompletionJob, created: Int = Int(Date().timeIntervalSince1970), tokenText: @escaping (Int) -> String = { "<\($0)>" }) {
        self.job = job
        self.tokenText = tokenText
        self.created = created
        let suffix = UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(24).lowercased()
        switch job.flavor {
        case .openAIChat: id = "chatcmpl-\(suffix)"
        case .openAICompletion: id = "cmpl-\(suffix)"
        case .llamaCompletion: id = "cmpl-\(suffix)"
        }
    }

    /// Whether `.finished` or `.failed` was seen.
    public var isFinished: Bool { finished }

    static func sseEvent(_ json: JSON) -> [UInt8] { Array("data: \(json.serialized())\n\n".utf8) }

    static var sseHeaders: HTTPHeaders {
        var h = HTTPHeaders()
        h.add("Content-Type", "text/event-stream")
        h.add("Cache-Control", "no-cache")
        // Tells nginx not to buffer the stream.
        h.add("X-Accel-Buffering", "no")
        return h
    }

    /// Parts to send as soon as the engine admitted the request: the SSE head (and for chat the
    /// first chunk carrying `role`), nothing for a JSON response.
    public func start() -> [ResponsePart] {
        guard job.stream else { return [] }
        var parts: [ResponsePart] = [.head(status: 200, headers: Self.sseHeaders)]
        if job.flavor == .openAIChat {
            sentRole = true
            parts.append(.body(Self.sseEvent(chatChunk(delta: .object([("role", .string("assistant")), ("content", .string(""))]),
                                                      finishReason: nil))))
        }
        return parts
    }

    /// The parts an engine event produces.
    public func consume(_ event: GenerationEvent) -> [ResponsePart] {
        guard !finished else { return [] }
        switch event {
        case let .token(tokenId, piece, logprob, top):
            generated += 1
            tokenIds.append(tokenId)
            let offset = text.utf8.count
            text += piece
            var entry: JSON = .null
            if job.request.logprobs, let logprob { entry = recordLogprob(logprob, top: top, offset: offset) }
            guard job.stream, !piece.isEmpty || !entry.isNull else { return [] }
            return [.body(Self.sseEvent(streamChunk(piece, tokenId: tokenId, logprobs: entry)))]
        case let .finished(reason, tail, usage, timings):
            finished = true
            text += tail
            return job.stream ? finishStream(reason: reason, tail: tail, usage: usage, timings: timings)
                              : ResponsePart.complete(.json(fullBody(reason: reason, usage: usage, timings: timings)))
        case let .failed(message):
            finished = true
            let error = APIError.server(message)
            if job.stream {
                return [.body(Self.sseEvent(error.json)), .end(close: true)]
            }
            return ResponsePart.complete(error.response)
        }
    }

    /// Stores one position's log-probabilities; returns what a stream chunk carries for it.
    private func recordLogprob(_ chosen: TokenLogprob, top: [TokenLogprob], offset: Int) -> JSON {
        let token = tokenText(chosen.token)
        switch job.flavor {
        case .openAIChat:
            func item(_ t: String, _ lp: Float) -> [(String, JSON)] {
                [("token", .string(t)), ("logprob", .double(Double(lp))), ("bytes", .array(t.utf8.map { .int(Int($0)) }))]
            }
            let alternatives = top.prefix(job.request.topLogprobs).map { JSON.object(item(tokenText($0.token), $0.logprob)) }
            let entry = JSON.object(item(token, chosen.logprob) + [("top_logprobs", .array(alternatives))])
            chatLogprobs.append(entry)
            return .object([("content", .array([entry]))])
        case .openAICompletion:
            let alternatives = JSON.object(top.prefix(job.request.topLogprobs).map { (tokenText($0.token), JSON.double(Double($0.logprob))) })
            legacyTokens.append(.string(token))
            legacyLogprobs.append(.double(Double(chosen.logprob)))
            legacyTop.append(alternatives)
            legacyOffsets.append(.int(offset))
            return .object([("tokens", .array([.string(token)])), ("token_logprobs", .array([.double(Double(chosen.logprob))])),
                            ("top_logprobs", .array([alternatives])), ("text_offset", .array([.int(offset)]))])
        case .llamaCompletion:
            // llama.cpp's server (`n_probs`): one entry per generated token.
            func item(_ id: Int, _ lp: Float) -> [(String, JSON)] {
                let t = tokenText(id)
                return [("id", .int(id)), ("token", .string(t)), ("bytes", .array(t.utf8.map { .int(Int($0)) })), ("logprob", .double(Double(lp)))]
            }
            let alternatives = top.prefix(job.request.topLogprobs).map { JSON.object(item($0.token, $0.logprob)) }
            let entry = JSON.object(item(chosen.token, chosen.logprob) + [("top_logprobs", .array(alternatives))])
            llamaProbabilities.append(entry)
            return .array([entry])
        }
    }

    private var fullLogprobs: JSON {
        guard job.request.logprobs else { return .null }
        switch job.flavor {
        case .openAIChat: return .object([("content", .array(chatLogprobs))])
        case .openAICompletion:
            return .object([("tokens", .array(legacyTokens)), ("token_logprobs", .array(legacyLogprobs)),
                            ("top_logprobs", .array(legacyTop)), ("text_offset", .array(legacyOffsets))])
        case .llamaCompletion: return .null
        }
    }

    static func finishReason(_ reason: FinishReason) -> String {
        switch reason {
        case .length: return "length"
        case .stop, .cancelled: return "stop"
        case .error: return "error"
        }
    }

    static func usageJSON(_ usage: Usage) -> JSON {
        .object([("prompt_tokens", .int(usage.promptTokens)), ("completion_tokens", .int(usage.completionTokens)),
                 ("total_tokens", .int(usage.totalTokens))])
    }

    static func timingsJSON(_ t: Timings) -> JSON {
        .object([("prompt_n", .int(t.promptN)), ("prompt_ms", .double(t.promptMs)),
                 ("prompt_per_token_ms", .double(t.promptN > 0 ? t.promptMs / Double(t.promptN) : 0)),
                 ("prompt_per_second", .double(t.promptPerSecond)),
                 ("predicted_n", .int(t.predictedN)), ("predicted_ms", .double(t.predictedMs)),
                 ("predicted_per_token_ms", .double(t.predictedN > 0 ? t.predictedMs / Double(t.predictedN) : 0)),
                 ("predicted_per_second", .double(t.predictedPerSecond))])
    }

    private func chatChunk(delta: JSON, finishReason: String?, logprobs: JSON = .null) -> JSON {
        .object([("id", .string(id)), ("object", .string("chat.completion.chunk")), ("created", .int(created)),
                 ("model", .string(job.model)), ("system_fingerprint", .string("moe-serve")),
                 ("choices", .array([.object([("index", .int(0)), ("delta", delta), ("logprobs", logprobs),
                                              ("finish_reason", finishReason.map { .string($0) } ?? .null)])]))])
    }

    private func completionChunk(_ piece: String, finishReason: String?, logprobs: JSON = .null) -> JSON {
        .object([("id", .string(id)), ("object", .string("text_completion")), ("created", .int(created)),
                 ("model", .string(job.model)), ("system_fingerprint", .string("moe-serve")),
                 ("choices", .array([.object([("text", .string(piece)), ("index", .int(0)), ("logprobs", logprobs),
                                              ("finish_reason", finishReason.map { .string($0) } ?? .null)])]))])
    }

    private func streamChunk(_ piece: String, tokenId: Int, logprobs: JSON) -> JSON {
        switch job.flavor {
        case .openAIChat: return chatChunk(delta: .object([("content", .string(piece))]), finishReason: nil, logprobs: logprobs)
        case .openAICompletion: return completionChunk(piece, finishReason: nil, logprobs: logprobs)
        case .llamaCompletion:
            var fields: [(String, JSON)] = [("index", .int(0)), ("content", .string(piece)), ("tokens", .array([.int(tokenId)])),
                                            ("stop", .bool(false)), ("id_slot", .int(0))]
            if logprobs != .null { fields.append(("completion_probabilities", logprobs)) }
            return .object(fields)
        }
    }

    private func llamaStopType(_ reason: FinishReason) -> String {
        switch reason {
        case .length: return "limit"
        case .stop: return "eos"
        case .cancelled, .error: return "none"
        }
    }

    private func llamaFinal(content: String, reason: FinishReason, usage: Usage, timings: Timings) -> JSON {
        .object([("index", .int(0)), ("content", .string(content)), ("tokens", .array(job.stream ? [] : tokenIds.map { .int($0) })),
                 ("id_slot", .int(0)), ("stop", .bool(true)), ("model", .string(job.model)),
                 ("tokens_predicted", .int(usage.completionTokens)), ("tokens_evaluated", .int(usage.promptTokens)),
                 ("generation_settings", generationSettings()),
                 ("prompt", .string("")), ("has_new_line", .bool(text.contains("\n"))), ("truncated", .bool(false)),
                 ("stop_type", .string(llamaStopType(reason))), ("stopping_word", .string("")), ("tokens_cached", .int(0)),
                 ("timings", Self.timingsJSON(timings))]
                + (job.request.logprobs && !job.stream ? [("completion_probabilities", .array(llamaProbabilities))] : []))
    }

    private func generationSettings() -> JSON {
        let s = job.request.sampling
        return .object([("n_predict", .int(job.request.maxTokens)), ("temperature", .double(Double(s.temperature))),
                        ("top_k", .int(s.topK)), ("top_p", .double(Double(s.topP))), ("min_p", .double(Double(s.minP))),
                        ("seed", s.seed.map { .int(Int(bitPattern: UInt($0))) } ?? .int(-1)),
                        ("stop", .array(job.request.stopStrings.map { .string($0) })), ("stream", .bool(job.stream))])
    }

    private func finishStream(reason: FinishReason, tail: String, usage: Usage, timings: Timings) -> [ResponsePart] {
        var events: [UInt8] = []
        let finish = Self.finishReason(reason)
        switch job.flavor {
        case .openAIChat:
            if !tail.isEmpty { events += Self.sseEvent(chatChunk(delta: .object([("content", .string(tail))]), finishReason: nil)) }
            events += Self.sseEvent(chatChunk(delta: .object([]), finishReason: finish))
            if job.includeUsage { events += Self.sseEvent(usageChunk(object: "chat.completion.chunk", usage: usage, timings: timings)) }
            events += Array("data: [DONE]\n\n".utf8)
        case .openAICompletion:
            events += Self.sseEvent(completionChunk(tail, finishReason: finish))
            if job.includeUsage { events += Self.sseEvent(usageChunk(object: "text_completion", usage: usage, timings: timings)) }
            events += Array("data: [DONE]\n\n".utf8)
        case .llamaCompletion:
            events += Self.sseEvent(llamaFinal(content: tail, reason: reason, usage: usage, timings: timings))
        }
        return [.body(events), .end(close: false)]
    }

    private func usageChunk(object: String, usage: Usage, timings: Timings) -> JSON {
        .object([("id", .string(id)), ("object", .string(object)), ("created", .int(created)), ("model", .string(job.model)),
                 ("system_fingerprint", .string("moe-serve")), ("choices", .array([])),
                 ("usage", Self.usageJSON(usage)), ("timings", Self.timingsJSON(timings))])
    }

    private func fullBody(reason: FinishReason, usage: Usage, timings: Timings) -> JSON {
        let finish = Self.finishReason(reason)
        switch job.flavor {
        case .openAIChat:
            let message = JSON.object([("role", .string("assistant")), ("content", .string(text))])
            return .object([("id", .string(id)), ("object", .string("chat.completion")), ("created", .int(created)),
                            ("model", .string(job.model)), ("system_fingerprint", .string("moe-serve")),
                            ("choices", .array([.object([("index", .int(0)), ("message", message), ("logprobs", fullLogprobs),
                                                         ("finish_reason", .string(finish))])])),
                            ("usage", Self.usageJSON(usage)), ("timings", Self.timingsJSON(timings))])
        case .openAICompletion:
            return .object([("id", .string(id)), ("object", .string("text_completion")), ("created", .int(created)),
                            ("model", .string(job.model)), ("system_fingerprint", .string("moe-serve")),
                            ("choices", .array([.object([("text", .string(text)), ("index", .int(0)), ("logprobs", fullLogprobs),
                                                         ("finish_reason", .string(finish))])])),
                            ("usage", Self.usageJSON(usage)), ("timings", Self.timingsJSON(timings))])
        case .llamaCompletion:
            return llamaFinal(content: text, reason: reason, usage: usage, timings: timings)
        }
    }
}
