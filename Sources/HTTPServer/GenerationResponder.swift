import Foundation
import InferenceEngine

/// Turns one request's engine events into response parts in the shape of its API:
/// OpenAI chunks or JSON body, llama.cpp chunks or JSON body. A request with `n` > 1 has one
/// engine sequence per choice; their events arrive interleaved, tagged with the choice index,
/// and the response ends when every choice has. Lives on the event loop; its work per event is
/// one small JSON serialization.
public final class GenerationResponder {
    let job: CompletionJob
    let id: String
    let created: Int
    /// Text of one token id, for log-probability entries (a table lookup in a real tokenizer).
    private let tokenText: (Int) -> String
    private var choices: [Choice]
    private var failed = false

    /// One choice's progress.
    private struct Choice {
        var text = ""
        var tokenIds: [Int] = []
        var finishReason: FinishReason?
        var usage: Usage?
        var timings: Timings?
        /// Chat: one entry per token. Completions: parallel arrays, as the legacy API has them.
        var chatLogprobs: [JSON] = []
        var llamaProbabilities: [JSON] = []
        var legacyTokens: [JSON] = [], legacyLogprobs: [JSON] = [], legacyTop: [JSON] = [], legacyOffsets: [JSON] = []
        /// Splits `<tool_call>` blocks out of the text when tools were offered.
        var tools: ToolCallStream?
        var sentEcho = false
    }

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
        var choice = Choice()
        if let tools = job.tools { choice.tools = ToolCallStream(tools: tools) }
        choices = Array(repeating: choice, count: max(1, job.choices))
        if let echo = job.echoText, !job.stream {
            for i in choices.indices { choices[i].text = echo }
        }
    }

    /// Whether every choice has finished, or one failed.
    public var isFinished: Bool { failed || choices.allSatisfy { $0.finishReason != nil } }

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
        for index in choices.indices {
            if job.flavor == .openAIChat {
                parts.append(.body(Self.sseEvent(chatChunk(index, delta: .object([("role", .string("assistant")), ("content", .string(""))]),
                                                          finishReason: nil))))
            } else if job.flavor == .openAICompletion, let echo = job.echoText {
                choices[index].sentEcho = true
                parts.append(.body(Self.sseEvent(completionChunk(index, echo, finishReason: nil))))
            }
        }
        return parts
    }

    /// The parts an engine event of choice `choice` produces.
    public func consume(_ event: GenerationEvent, choice index: Int = 0) -> [ResponsePart] {
        guard !failed, choices.indices.contains(index), choices[index].finishReason == nil else { return [] }
        switch event {
        case let .token(tokenId, piece, logprob, top):
            choices[index].tokenIds.append(tokenId)
            let offset = choices[index].text.utf8.count
            choices[index].text += piece
            var entry: JSON = .null
            if job.request.logprobs, let logprob { entry = recordLogprob(index, logprob, top: top, offset: offset) }
            guard job.stream else { return [] }
            if choices[index].tools != nil {
                let out = choices[index].tools!.push(piece)
                return streamToolParts(index, out, tokenId: tokenId, logprobs: entry)
            }
            guard !piece.isEmpty || !entry.isNull else { return [] }
            return [.body(Self.sseEvent(streamChunk(index, piece, tokenId: tokenId, logprobs: entry)))]
        case let .finished(reason, tail, usage, timings):
            choices[index].text += tail
            choices[index].finishReason = reason
            choices[index].usage = usage
            choices[index].timings = timings
            if index == 0 { lastTail = tail }
            var parts: [ResponsePart] = []
            if job.stream { parts += finishChoiceStream(index, tail: tail) }
            guard isFinished else { return parts }
            let (allUsage, allTimings) = totals()
            if job.stream { return parts + finishStream(usage: allUsage, timings: allTimings) }
            return ResponsePart.complete(.json(fullBody(usage: allUsage, timings: allTimings)))
        case let .failed(message):
            failed = true
            let error = APIError.server(message)
            if job.stream {
                return [.body(Self.sseEvent(error.json)), .end(close: true)]
            }
            return ResponsePart.complete(error.response)
        }
    }

    /// Usage and timings over every choice: the prompt counted once (it is the same prompt), the
    /// generated tokens summed, the longest times.
    private func totals() -> (Usage, Timings) {
        let first = choices[0]
        let prompt = first.usage?.promptTokens ?? job.request.prompt.count
        let completion = choices.reduce(0) { $0 + ($1.usage?.completionTokens ?? 0) }
        let promptMs = choices.map { $0.timings?.promptMs ?? 0 }.max() ?? 0
        let predictedMs = choices.map { $0.timings?.predictedMs ?? 0 }.max() ?? 0
        var timings = Timings(promptN: first.timings?.promptN ?? prompt, promptMs: promptMs, predictedN: completion, predictedMs: predictedMs)
        timings.cacheN = first.timings?.cacheN ?? 0
        var usage = Usage(promptTokens: prompt, completionTokens: completion)
        // The prompt is counted once: as cached when the first choice found it cached (the
        // other choices share the first one's prefill).
        usage.cachedTokens = first.usage?.cachedTokens ?? 0
        return (usage, timings)
    }

    /// Stores one position's log-probabilities; returns what a stream chunk carries for it.
    private func recordLogprob(_ index: Int, _ chosen: TokenLogprob, top: [TokenLogprob], offset: Int) -> JSON {
        let token = tokenText(chosen.token)
        switch job.flavor {
        case .openAIChat:
            func item(_ t: String, _ lp: Float) -> [(String, JSON)] {
                [("token", .string(t)), ("logprob", .double(Double(lp))), ("bytes", .array(t.utf8.map { .int(Int($0)) }))]
            }
            let alternatives = top.prefix(job.request.topLogprobs).map { JSON.object(item(tokenText($0.token), $0.logprob)) }
            let entry = JSON.object(item(token, chosen.logprob) + [("top_logprobs", .array(alternatives))])
            choices[index].chatLogprobs.append(entry)
            return .object([("content", .array([entry]))])
        case .openAICompletion:
            let alternatives = JSON.object(top.prefix(job.request.topLogprobs).map { (tokenText($0.token), JSON.double(Double($0.logprob))) })
            choices[index].legacyTokens.append(.string(token))
            choices[index].legacyLogprobs.append(.double(Double(chosen.logprob)))
            choices[index].legacyTop.append(alternatives)
            choices[index].legacyOffsets.append(.int(offset))
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
            choices[index].llamaProbabilities.append(entry)
            return .array([entry])
        }
    }

    private func fullLogprobs(_ c: Choice) -> JSON {
        guard job.request.logprobs else { return .null }
        switch job.flavor {
        case .openAIChat: return .object([("content", .array(c.chatLogprobs))])
        case .openAICompletion:
            return .object([("tokens", .array(c.legacyTokens)), ("token_logprobs", .array(c.legacyLogprobs)),
                            ("top_logprobs", .array(c.legacyTop)), ("text_offset", .array(c.legacyOffsets))])
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
                 ("total_tokens", .int(usage.totalTokens)),
                 ("prompt_tokens_details", .object([("cached_tokens", .int(usage.cachedTokens))]))])
    }

    /// `return_experts`: per layer, `[expert, tokens]` pairs of the experts the reply's tokens
    /// were routed to, most used first (experts never used left out).
    static func expertsJSON(_ table: [[Int32]]) -> JSON {
        .array(table.map { counts in
            .array(counts.enumerated().filter { $0.element > 0 }.sorted { $0.element > $1.element || ($0.element == $1.element && $0.offset < $1.offset) }
                .map { .array([.int($0.offset), .int(Int($0.element))]) })
        })
    }

    /// `json` (a chunk or body) with `key: value` added to its `choices[0]` object.
    static func addingToFirstChoice(_ json: JSON, _ key: String, _ value: JSON) -> JSON {
        guard case .object(var fields) = json, let at = fields.firstIndex(where: { $0.0 == "choices" }),
              case .array(var items) = fields[at].1, !items.isEmpty, case .object(var choice) = items[0] else { return json }
        choice.append((key, value))
        items[0] = .object(choice)
        fields[at].1 = .array(items)
        return .object(fields)
    }

    /// The `experts` entry of choice `index`, when the request asked for it.
    private func expertsEntry(_ index: Int) -> JSON? {
        guard job.request.recordExperts, let table = choices[index].usage?.experts else { return nil }
        return Self.expertsJSON(table)
    }

    static func timingsJSON(_ t: Timings) -> JSON {
        .object([("cache_n", .int(t.cacheN)), ("prompt_n", .int(t.promptN)), ("prompt_ms", .double(t.promptMs)),
                 ("prompt_per_token_ms", .double(t.promptN > 0 ? t.promptMs / Double(t.promptN) : 0)),
                 ("prompt_per_second", .double(t.promptPerSecond)),
                 ("predicted_n", .int(t.predictedN)), ("predicted_ms", .double(t.predictedMs)),
                 ("predicted_per_token_ms", .double(t.predictedN > 0 ? t.predictedMs / Double(t.predictedN) : 0)),
                 ("predicted_per_second", .double(t.predictedPerSecond))])
    }

    private func chatChunk(_ index: Int, delta: JSON, finishReason: String?, logprobs: JSON = .null) -> JSON {
        .object([("id", .string(id)), ("object", .string("chat.completion.chunk")), ("created", .int(created)),
                 ("model", .string(job.model)), ("system_fingerprint", .string("moe-serve")),
                 ("choices", .array([.object([("index", .int(index)), ("delta", delta), ("logprobs", logprobs),
                                              ("finish_reason", finishReason.map { .string($0) } ?? .null)])]))])
    }

    private func completionChunk(_ index: Int, _ piece: String, finishReason: String?, logprobs: JSON = .null) -> JSON {
        .object([("id", .string(id)), ("object", .string("text_completion")), ("created", .int(created)),
                 ("model", .string(job.model)), ("system_fingerprint", .string("moe-serve")),
                 ("choices", .array([.object([("text", .string(piece)), ("index", .int(index)), ("logprobs", logprobs),
                                              ("finish_reason", finishReason.map { .string($0) } ?? .null)])]))])
    }

    private func streamChunk(_ index: Int, _ piece: String, tokenId: Int, logprobs: JSON) -> JSON {
        switch job.flavor {
        case .openAIChat: return chatChunk(index, delta: .object([("content", .string(piece))]), finishReason: nil, logprobs: logprobs)
        case .openAICompletion: return completionChunk(index, piece, finishReason: nil, logprobs: logprobs)
        case .llamaCompletion:
            var fields: [(String, JSON)] = [("index", .int(index)), ("content", .string(piece)), ("tokens", .array([.int(tokenId)])),
                                            ("stop", .bool(false)), ("id_slot", .int(0))]
            if logprobs != .null { fields.append(("completion_probabilities", logprobs)) }
            return .object(fields)
        }
    }

    /// Stream chunks for what the tool-call splitter released: content as content deltas, each
    /// finished call as a `tool_calls` delta.
    private func streamToolParts(_ index: Int, _ out: ToolCallStream.Output, tokenId: Int, logprobs: JSON) -> [ResponsePart] {
        var parts: [ResponsePart] = []
        if !out.content.isEmpty || !logprobs.isNull {
            parts.append(.body(Self.sseEvent(streamChunk(index, out.content, tokenId: tokenId, logprobs: logprobs))))
        }
        for call in out.calls {
            parts.append(.body(Self.sseEvent(chatChunk(index, delta: .object([("tool_calls", .array([call.deltaJSON]))]), finishReason: nil))))
        }
        return parts
    }

    private func llamaStopType(_ reason: FinishReason) -> String {
        switch reason {
        case .length: return "limit"
        case .stop: return "eos"
        case .cancelled, .error: return "none"
        }
    }

    private func llamaFinal(_ c: Choice, index: Int, content: String, usage: Usage, timings: Timings) -> JSON {
        .object([("index", .int(index)), ("content", .string(content)), ("tokens", .array(job.stream ? [] : c.tokenIds.map { .int($0) })),
                 ("id_slot", .int(0)), ("stop", .bool(true)), ("model", .string(job.model)),
                 ("tokens_predicted", .int(usage.completionTokens)), ("tokens_evaluated", .int(usage.promptTokens)),
                 ("generation_settings", generationSettings()),
                 ("prompt", .string("")), ("has_new_line", .bool(c.text.contains("\n"))), ("truncated", .bool(false)),
                 ("stop_type", .string(llamaStopType(c.finishReason ?? .stop))), ("stopping_word", .string("")), ("tokens_cached", .int(usage.cachedTokens)),
                 ("timings", Self.timingsJSON(timings))]
                + (job.request.logprobs && !job.stream ? [("completion_probabilities", .array(c.llamaProbabilities))] : [])
                + (expertsEntry(index).map { [("experts", $0)] } ?? []))
    }

    private func generationSettings() -> JSON {
        let s = job.request.sampling
        return .object([("n_predict", .int(job.request.maxTokens)), ("temperature", .double(Double(s.temperature))),
                        ("top_k", .int(s.topK)), ("top_p", .double(Double(s.topP))), ("min_p", .double(Double(s.minP))),
                        ("seed", s.seed.map { .int(Int(bitPattern: UInt($0))) } ?? .int(-1)),
                        ("stop", .array(job.request.stopStrings.map { .string($0) })), ("stream", .bool(job.stream))])
    }

    /// A choice's closing chunks (its held-back text and its finish reason), sent when it ends.
    private func finishChoiceStream(_ index: Int, tail: String) -> [ResponsePart] {
        var events: [UInt8] = []
        let c = choices[index]
        let reason = c.finishReason ?? .stop
        switch job.flavor {
        case .openAIChat:
            var finish = Self.finishReason(reason)
            if choices[index].tools != nil {
                let out = choices[index].tools!.push(tail)
                let rest = choices[index].tools!.finish()
                for part in streamToolParts(index, out, tokenId: -1, logprobs: .null) + streamToolParts(index, rest, tokenId: -1, logprobs: .null) {
                    if case let .body(b) = part { events += b }
                }
                if choices[index].tools!.callCount > 0 { finish = "tool_calls" }
            } else if !tail.isEmpty {
                events += Self.sseEvent(chatChunk(index, delta: .object([("content", .string(tail))]), finishReason: nil))
            }
            let last = chatChunk(index, delta: .object([]), finishReason: finish)
            events += Self.sseEvent(expertsEntry(index).map { Self.addingToFirstChoice(last, "experts", $0) } ?? last)
        case .openAICompletion:
            let last = completionChunk(index, tail, finishReason: Self.finishReason(reason))
            events += Self.sseEvent(expertsEntry(index).map { Self.addingToFirstChoice(last, "experts", $0) } ?? last)
        case .llamaCompletion:
            break  // the final object carries the tail, sent once every choice is done
        }
        return events.isEmpty ? [] : [.body(events)]
    }

    private func finishStream(usage: Usage, timings: Timings) -> [ResponsePart] {
        var events: [UInt8] = []
        switch job.flavor {
        case .openAIChat:
            if job.includeUsage { events += Self.sseEvent(usageChunk(object: "chat.completion.chunk", usage: usage, timings: timings)) }
            events += Array("data: [DONE]\n\n".utf8)
        case .openAICompletion:
            if job.includeUsage { events += Self.sseEvent(usageChunk(object: "text_completion", usage: usage, timings: timings)) }
            events += Array("data: [DONE]\n\n".utf8)
        case .llamaCompletion:
            events += Self.sseEvent(llamaFinal(choices[0], index: 0, content: lastTail, usage: usage, timings: timings))
        }
        return [.body(events), .end(close: false)]
    }

    /// llama.cpp's final stream object carries the text released at the end (held back by stop strings).
    private var lastTail = ""

    private func usageChunk(object: String, usage: Usage, timings: Timings) -> JSON {
        .object([("id", .string(id)), ("object", .string(object)), ("created", .int(created)), ("model", .string(job.model)),
                 ("system_fingerprint", .string("moe-serve")), ("choices", .array([])),
                 ("usage", Self.usageJSON(usage)), ("timings", Self.timingsJSON(timings))])
    }

    private func fullBody(usage: Usage, timings: Timings) -> JSON {
        switch job.flavor {
        case .openAIChat:
            let items = choices.enumerated().map { index, c -> JSON in
                var finish = Self.finishReason(c.finishReason ?? .stop)
                var message: [(String, JSON)] = [("role", .string("assistant")), ("content", .string(c.text))]
                if let tools = job.tools {
                    let parsed = ToolCallStream.split(c.text, tools: tools)
                    if !parsed.calls.isEmpty {
                        let content = parsed.content.trimmingCharacters(in: .whitespacesAndNewlines)
                        message = [("role", .string("assistant")), ("content", content.isEmpty ? .null : .string(content)),
                                   ("tool_calls", .array(parsed.calls.enumerated().map { $1.messageJSON(index: $0) }))]
                        finish = "tool_calls"
                    }
                }
                return .object([("index", .int(index)), ("message", .object(message)), ("logprobs", fullLogprobs(c)),
                                ("finish_reason", .string(finish))] + (expertsEntry(index).map { [("experts", $0)] } ?? []))
            }
            return .object([("id", .string(id)), ("object", .string("chat.completion")), ("created", .int(created)),
                            ("model", .string(job.model)), ("system_fingerprint", .string("moe-serve")),
                            ("choices", .array(items)), ("usage", Self.usageJSON(usage)), ("timings", Self.timingsJSON(timings))])
        case .openAICompletion:
            let items = choices.enumerated().map { index, c -> JSON in
                .object([("text", .string(c.text)), ("index", .int(index)), ("logprobs", fullLogprobs(c)),
                         ("finish_reason", .string(Self.finishReason(c.finishReason ?? .stop)))]
                        + (expertsEntry(index).map { [("experts", $0)] } ?? []))
            }
            return .object([("id", .string(id)), ("object", .string("text_completion")), ("created", .int(created)),
                            ("model", .string(job.model)), ("system_fingerprint", .string("moe-serve")),
                            ("choices", .array(items)), ("usage", Self.usageJSON(usage)), ("timings", Self.timingsJSON(timings))])
        case .llamaCompletion:
            return llamaFinal(choices[0], index: 0, content: choices[0].text, usage: usage, timings: timings)
        }
    }
}
