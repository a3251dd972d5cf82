import Testing
@testable import HTTPServer
import InferenceEngine

/// SSE framing and JSON bodies, fed with scripted engine events.
@Suite struct ResponderTests {
    let usage = Usage(promptTokens: 3, completionTokens: 2)
    let timings = Timings(promptN: 3, promptMs: 10, predictedN: 2, predictedMs: 20)

    func job(_ flavor: APIFlavor, stream: Bool, includeUsage: Bool = false) -> CompletionJob {
        CompletionJob(flavor: flavor, request: GenerationRequest(prompt: [1, 2, 3], maxTokens: 8), stream: stream,
                      includeUsage: includeUsage, model: "m")
    }

    func run(_ job: CompletionJob, _ events: [GenerationEvent]) -> (head: Int?, body: String, closed: Bool) {
        let r = GenerationResponder(job: job)
        var parts = r.start()
        for e in events { parts += r.consume(e) }
        var status: Int?
        var body: [UInt8] = []
        var closed = false
        var ended = false
        for p in parts {
            switch p {
            case let .head(s, _): status = s
            case let .body(b): body += b
            case let .end(c): closed = c; ended = true
            }
        }
        #expect(ended)
        return (status, String(decoding: body, as: UTF8.self), closed)
    }

    var tokens: [GenerationEvent] {
        [.token(id: 10, text: "Hel", logprob: nil, topLogprobs: []),
         .token(id: 11, text: "", logprob: nil, topLogprobs: []),
         .token(id: 12, text: "lo", logprob: nil, topLogprobs: []),
         .finished(reason: .stop, text: "", usage: usage, timings: timings)]
    }

    /// The `data:` payloads of an SSE body, checking the framing on the way.
    func events(_ body: String) -> [String] {
        #expect(body.hasSuffix("\n\n"))
        return body.components(separatedBy: "\n\n").filter { !$0.isEmpty }.map { event in
            #expect(event.hasPrefix("data: "))
            return String(event.dropFirst(6))
        }
    }

    @Test func chatStreamRoleFirstFinishReasonLastUsageAndDone() throws {
        let (status, body, closed) = run(job(.openAIChat, stream: true, includeUsage: true), tokens)
        #expect(status == 200)
        #expect(!closed)
        let data = events(body)
        #expect(data.last == "[DONE]")
        let chunks = try data.dropLast().map { try JSON.parse($0) }
        #expect(chunks.count == 5)  // role, "Hel", "lo", finish, usage (the empty token makes no chunk)
        #expect(chunks[0]["choices"]?[0]?["delta"]?["role"] == .string("assistant"))
        #expect(chunks[1]["choices"]?[0]?["delta"]?["content"] == .string("Hel"))
        #expect(chunks[1]["choices"]?[0]?["delta"]?["role"] == nil)
        #expect(chunks[2]["choices"]?[0]?["delta"]?["content"] == .string("lo"))
        for chunk in chunks.prefix(3) {
            #expect(chunk["choices"]?[0]?["finish_reason"] == .null)
            #expect(chunk["object"] == .string("chat.completion.chunk"))
        }
        #expect(chunks[3]["choices"]?[0]?["finish_reason"] == .string("stop"))
        #expect(chunks[4]["choices"] == .array([]))
        #expect(chunks[4]["usage"]?["total_tokens"] == .int(5))
        // Every chunk of a stream carries the same id.
        #expect(Set(chunks.compactMap { $0["id"]?.stringValue }).count == 1)
    }

    @Test func chatStreamWithoutUsageHasNoUsageChunk() throws {
        let data = events(run(job(.openAIChat, stream: true), tokens).body)
        #expect(data.count == 5)
        #expect(!data.contains { $0.contains("\"usage\"") })
    }

    @Test func completionStream() throws {
        let data = events(run(job(.openAICompletion, stream: true), tokens).body)
        #expect(data.last == "[DONE]")
        let chunks = try data.dropLast().map { try JSON.parse($0) }
        #expect(chunks.map { $0["choices"]?[0]?["text"]?.stringValue ?? "?" } == ["Hel", "lo", ""])
        #expect(chunks.last?["choices"]?[0]?["finish_reason"] == .string("stop"))
        #expect(chunks.first?["object"] == .string("text_completion"))
    }

    @Test func llamaStreamEndsWithStopTrue() throws {
        let data = events(run(job(.llamaCompletion, stream: true), tokens).body)
        #expect(!data.contains("[DONE]"))
        let chunks = try data.map { try JSON.parse($0) }
        #expect(chunks.map { $0["stop"] } == [.bool(false), .bool(false), .bool(true)])
        #expect(chunks[0]["content"] == .string("Hel"))
        #expect(chunks.last?["timings"]?["predicted_n"] == .int(2))
        #expect(chunks.last?["tokens_predicted"] == .int(2))
    }

    @Test func nonStreamingBodiesCarryUsageAndTimings() throws {
        for flavor in [APIFlavor.openAIChat, .openAICompletion, .llamaCompletion] {
            let (status, body, _) = run(job(flavor, stream: false), tokens)
            #expect(status == 200)
            let json = try JSON.parse(body)
            #expect(json["timings"]?["prompt_n"] == .int(3))
            #expect(json["timings"]?["predicted_per_second"] == .double(100))
            switch flavor {
            case .openAIChat:
                #expect(json["choices"]?[0]?["message"]?["content"] == .string("Hello"))
                #expect(json["usage"]?["prompt_tokens"] == .int(3))
            case .openAICompletion:
                #expect(json["choices"]?[0]?["text"] == .string("Hello"))
                #expect(json["choices"]?[0]?["finish_reason"] == .string("stop"))
            case .llamaCompletion:
                #expect(json["content"] == .string("Hello"))
                #expect(json["stop"] == .bool(true))
                #expect(json["tokens_evaluated"] == .int(3))
            }
        }
    }

    @Test func lengthFinishReason() throws {
        let events: [GenerationEvent] = [.token(id: 1, text: "a", logprob: nil, topLogprobs: []),
                                         .finished(reason: .length, text: "", usage: usage, timings: timings)]
        let json = try JSON.parse(run(job(.openAIChat, stream: false), events).body)
        #expect(json["choices"]?[0]?["finish_reason"] == .string("length"))
    }

    @Test func midStreamErrorIsAnErrorEventThenClose() throws {
        let events: [GenerationEvent] = [.token(id: 1, text: "a", logprob: nil, topLogprobs: []), .failed(message: "disk gone")]
        let (_, body, closed) = run(job(.openAIChat, stream: true), events)
        #expect(closed)
        let data = self.events(body)
        let error = try JSON.parse(data.last!)
        #expect(error["error"]?["message"] == .string("disk gone"))
        #expect(error["error"]?["code"] == .int(500))
    }

    @Test func failureWithoutStreamIs500() throws {
        let (status, body, _) = run(job(.openAICompletion, stream: false), [.failed(message: "x")])
        #expect(status == 500)
        #expect(try JSON.parse(body)["error"]?["type"] == .string("server_error"))
    }
}

@Suite struct LogprobTests {
    func events() -> [GenerationEvent] {
        [.token(id: 104, text: "h", logprob: TokenLogprob(token: 104, logprob: -0.5),
                topLogprobs: [TokenLogprob(token: 104, logprob: -0.5), TokenLogprob(token: 105, logprob: -1.5)]),
         .finished(reason: .stop, text: "", usage: Usage(promptTokens: 1, completionTokens: 1),
                   timings: Timings(promptN: 1, promptMs: 1, predictedN: 1, predictedMs: 1))]
    }

    func body(_ flavor: APIFlavor, stream: Bool) -> String {
        let job = CompletionJob(flavor: flavor, request: GenerationRequest(prompt: [1], maxTokens: 4, logprobs: true, topLogprobs: 2),
                                stream: stream, includeUsage: false, model: "m")
        let r = GenerationResponder(job: job, tokenText: { ByteCodec().decode([$0]) })
        var out: [UInt8] = []
        for part in r.start() + events().flatMap({ r.consume($0) }) { if case let .body(b) = part { out += b } }
        return String(decoding: out, as: UTF8.self)
    }

    @Test func chatLogprobs() throws {
        let json = try JSON.parse(body(.openAIChat, stream: false))
        let entry = json["choices"]?[0]?["logprobs"]?["content"]?[0]
        #expect(entry?["token"] == .string("h"))
        #expect(entry?["logprob"] == .double(-0.5))
        #expect(entry?["top_logprobs"]?[1]?["token"] == .string("i"))
        let streamed = body(.openAIChat, stream: true)
        #expect(streamed.contains("\"logprobs\":{\"content\":[{\"token\":\"h\""))
    }

    @Test func completionLogprobs() throws {
        let json = try JSON.parse(body(.openAICompletion, stream: false))
        let lp = json["choices"]?[0]?["logprobs"]
        #expect(lp?["tokens"] == .array([.string("h")]))
        #expect(lp?["token_logprobs"] == .array([.double(-0.5)]))
        #expect(lp?["top_logprobs"]?[0]?["i"] == .double(-1.5))
        #expect(lp?["text_offset"] == .array([.int(0)]))
    }

    /// llama.cpp's `/completion` with `n_probs`: `completion_probabilities`, one entry per token
    /// with `id`, `token`, `bytes`, `logprob` and `top_logprobs`, in the final body and in
    /// each streamed chunk.
    @Test func llamaCompletionProbabilities() throws {
        let json = try JSON.parse(body(.llamaCompletion, stream: false))
        let entry = json["completion_probabilities"]?[0]
        #expect(entry?["id"] == .int(104))
        #expect(entry?["token"] == .string("h"))
        #expect(entry?["bytes"] == .array([.int(104)]))
        #expect(entry?["logprob"] == .double(-0.5))
        #expect(entry?["top_logprobs"]?[1]?["id"] == .int(105))
        #expect(entry?["top_logprobs"]?[1]?["logprob"] == .double(-1.5))
        let streamed = body(.llamaCompletion, stream: true)
        #expect(streamed.contains("\"completion_probabilities\":[{\"id\":104,\"token\":\"h\""))
    }
}
