import Foundation
import Testing
@testable import HTTPServer
import InferenceEngine

/// A byte codec that also has fill-in-the-middle tokens (257-259) and knows them by text.
struct FIMCodec: ExtendedPromptCodec {
    var base = ByteCodec(contextLength: 4096)
    var contextLength: Int { base.contextLength }
    var vocabularySize: Int { 260 }
    var modelName: String { "fim-model" }
    var stopTokenIds: Set<Int> { [256] }
    func encode(_ text: String, addSpecialTokens: Bool) -> [Int] { base.encode(text, addSpecialTokens: addSpecialTokens) }
    func decode(_ ids: [Int]) -> String { base.decode(ids) }
    func renderChat(_ messages: [ChatTurn]) throws -> String { try base.renderChat(messages) }
    func tokenBytes(_ id: Int) -> [UInt8]? { id < 256 ? [UInt8(id)] : nil }
    func tokenId(for text: String) -> Int? { ["<|fim_prefix|>": 257, "<|fim_suffix|>": 258, "<|fim_middle|>": 259][text] }
    var chatTemplateSource: String? { "{{ messages }} {{ tools }} tool_calls" }
    func renderChat(messages: [JSON], tools: [JSON]?, extra: [(String, JSON)], addGenerationPrompt: Bool) throws -> String {
        "msgs=\(JSON.array(messages).serialized()) tools=\(tools.map { JSON.array($0).serialized() } ?? "none") extra=\(JSON.object(extra).serialized())"
    }
}

/// Issue 24's request fields: refused when not honoured, constraints compiled, tools, n, echo,
/// logit_bias, fill-in-the-middle and llama-server's routes, on the router and the responder.
@Suite struct APIFeatureTests {
    let service = ScriptedService()
    var backend: ModelBackend { ModelBackend(service: service, codec: ByteCodec()) }

    func router() -> APIRouter { APIRouter(config: ServerConfig(), metrics: ServerMetrics()) }
    func post(_ path: String, _ body: String) -> HTTPRequest {
        HTTPRequest(method: "POST", target: path, headers: HTTPHeaders([]), body: Array(body.utf8))
    }
    func outcome(_ path: String, _ body: String, backend: ModelBackend? = nil) -> (status: Int, message: String, job: CompletionJob?, body: JSON?) {
        switch router().route(post(path, body), backend: backend ?? self.backend) {
        case let .response(r):
            let json = try? JSON.parse(r.body)
            return (r.status, json?["error"]?["message"]?.stringValue ?? "", nil, json)
        case let .generate(job): return (200, "", job, nil)
        }
    }

    @Test func fieldsTheServerDoesNotHonourAre400NamingThem() {
        for (path, body, field) in [("/v1/completions", #"{"prompt": "x", "mirostat": 2}"#, "mirostat"),
                                    ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x", "audio": 1}]}"#, "messages[0].audio"),
                                    ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "stream_options": {"chunk": 1}}"#, "stream_options.chunk"),
                                    ("/completion", #"{"prompt": "x", "typical_p": 0.9}"#, "typical_p"),
                                    ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object", "extra": 1}}"#, "response_format.extra"),
                                    ("/v1/completions", #"{"prompt": "x", "best_of": 3}"#, "best_of")] {
            let r = outcome(path, body)
            #expect(r.status == 400 && r.message.contains("'\(field)'"), "\(path) \(field): \(r.message)")
        }
        // Explicit nulls are absent (the openai client sends them), and known fields still pass.
        #expect(outcome("/v1/completions", #"{"prompt": "x", "mirostat": null, "user": "u", "n": 1}"#).status == 200)
    }

    @Test func constraintsBecomeAPerSequenceTokenConstraint() {
        let r = outcome("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"name": "n", "strict": true, "schema": {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}}}}"#)
        guard let job = r.job, let factory = job.request.constraint else { Issue.record("no constraint"); return }
        // Two sequences, two independent states: the byte codec makes every byte a token.
        let first = factory.make(), second = factory.make()
        var logits = [Float](repeating: 0, count: 257)
        #expect(first.constrain(&logits))
        #expect(logits.enumerated().filter { $0.element.isFinite }.map(\.offset) == [Int(UInt8(ascii: "{"))])
        for b in Array(#"{"a":true}"#.utf8) { first.accept(Int(b)) }
        #expect(first.isComplete && !second.isComplete)
        var again = [Float](repeating: 0, count: 257)
        #expect(second.constrain(&again) && again[Int(UInt8(ascii: "{"))] == 0)
        #expect(outcome("/completion", #"{"prompt": "x", "grammar": "root ::= \"a\" b"}"#).message.contains("'b' is used but never defined"))
        #expect(outcome("/completion", #"{"prompt": "x", "json_schema": {"type": "string"}, "grammar": "root ::= \"a\""}"#).message.contains("both constrain"))
        #expect(outcome("/v1/completions", #"{"prompt": "x", "response_format": {"type": "json_object"}}"#).job?.request.constraint != nil)
    }

    @Test func toolsAreRenderedAndAForcedCallIsConstrained() {
        let tools = #"[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]"#
        // A template without tool support gets the tools as a system message (byte codec).
        let wide = ModelBackend(service: service, codec: ByteCodec(contextLength: 4096))
        let plain = outcome("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "hi"}], "tools": \#(tools)}"#, backend: wide)
        let prompt = ByteCodec().decode(plain.job?.request.prompt ?? [])
        #expect(prompt.hasPrefix("<system># Tools") && prompt.contains("get_weather") && prompt.contains("<tool_call>"))
        #expect(plain.job?.tools?.functions.map(\.name) == ["get_weather"] && plain.job?.request.constraint == nil)
        // A template that uses tools gets them as its `tools` variable, and the history's calls as messages.
        let fim = ModelBackend(service: service, codec: FIMCodec())
        let history = #"[{"role": "user", "content": "hi"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]}, {"role": "tool", "tool_call_id": "c1", "content": "3C"}]"#
        let rendered = outcome("/v1/chat/completions", #"{"messages": \#(history), "tools": \#(tools), "tool_choice": "required"}"#, backend: fim)
        let text = FIMCodec().decode(rendered.job?.request.prompt ?? [])
        #expect(text.contains(#""tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":{"city":"Oslo"}}}]"#))
        #expect(text.contains(#"tools=[{"type":"function""#))
        #expect(rendered.job?.request.constraint != nil)
        #expect(outcome("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "tools": \#(tools), "tool_choice": {"type": "function", "function": {"name": "other"}}}"#).message.contains("'other' is not among"))
        #expect(outcome("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}"#).status == 400)
        #expect(outcome("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "tools": \#(tools), "tool_choice": "none"}"#).job?.tools == nil)
    }

    @Test func toolCallsAreParsedOutOfTextAndStreams() throws {
        let set = try ToolSet.parse(try JSON.parse(Array(#"[{"type": "function", "function": {"name": "f"}}]"#.utf8)))
        let text = "Sure.<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call><tool_call>{\"name\": \"g\"}</tool_call>"
        let whole = ToolCallStream.split(text, tools: set)
        #expect(whole.calls.map(\.name) == ["f"] && whole.calls[0].arguments == #"{"x":1}"#)
        #expect(whole.content == "Sure.<tool_call>{\"name\": \"g\"}</tool_call>")  // an unknown function stays text
        var stream = ToolCallStream(tools: set)
        var content = "", calls: [ParsedToolCall] = []
        for piece in text.map(String.init) {
            let out = stream.push(piece)
            content += out.content
            calls += out.calls
        }
        let rest = stream.finish()
        content += rest.content
        #expect(calls.map(\.name) == ["f"] && content == whole.content)
    }

    @Test func responderCarriesNChoicesEchoAndToolCalls() throws {
        var job = CompletionJob(flavor: .openAICompletion, request: GenerationRequest(prompt: [1], maxTokens: 4), stream: false,
                                includeUsage: false, model: "m")
        job.choices = 2
        job.echoText = "P:"
        let r = GenerationResponder(job: job)
        let usage = Usage(promptTokens: 1, completionTokens: 1)
        let timings = Timings(promptN: 1, promptMs: 1, predictedN: 1, predictedMs: 1)
        var parts = r.consume(.token(id: 5, text: "a", logprob: nil, topLogprobs: []), choice: 1)
        parts += r.consume(.finished(reason: .stop, text: "", usage: usage, timings: timings), choice: 1)
        #expect(parts.isEmpty && !r.isFinished)
        parts += r.consume(.token(id: 6, text: "b", logprob: nil, topLogprobs: []), choice: 0)
        parts += r.consume(.finished(reason: .length, text: "", usage: usage, timings: timings), choice: 0)
        guard case let .body(bytes)? = parts.first(where: { if case .body = $0 { return true }; return false }) else { Issue.record("no body"); return }
        let body = try JSON.parse(bytes)
        #expect(body["choices"]?[0]?["text"] == .string("P:b") && body["choices"]?[1]?["text"] == .string("P:a"))
        #expect(body["choices"]?[0]?["finish_reason"] == .string("length") && body["choices"]?[1]?["index"] == .int(1))
        #expect(body["usage"]?["completion_tokens"] == .int(2) && body["usage"]?["prompt_tokens"] == .int(1))

        var chat = CompletionJob(flavor: .openAIChat, request: GenerationRequest(prompt: [1], maxTokens: 4), stream: true,
                                 includeUsage: false, model: "m")
        chat.tools = try ToolSet.parse(try JSON.parse(Array(#"[{"type": "function", "function": {"name": "f"}}]"#.utf8)))
        let s = GenerationResponder(job: chat)
        var out = s.start()
        for piece in ["<tool", "_call>{\"name\": \"f\", ", "\"arguments\": {}}", "</tool_call>"] {
            out += s.consume(.token(id: 1, text: piece, logprob: nil, topLogprobs: []))
        }
        out += s.consume(.finished(reason: .stop, text: "", usage: usage, timings: timings))
        var sse: [UInt8] = []
        for case let .body(b) in out { sse += b }
        let events = String(decoding: sse, as: UTF8.self).components(separatedBy: "\n\n").filter { $0.hasPrefix("data: {") }
        let chunks = try events.map { try JSON.parse(Array($0.dropFirst(6).utf8)) }
        let calls = chunks.compactMap { $0["choices"]?[0]?["delta"]?["tool_calls"]?[0] }
        #expect(calls.count == 1 && calls[0]["function"]?["name"] == .string("f") && calls[0]["function"]?["arguments"] == .string("{}"))
        #expect(chunks.last?["choices"]?[0]?["finish_reason"] == .string("tool_calls"))
        #expect(!chunks.contains { $0["choices"]?[0]?["delta"]?["content"]?.stringValue?.contains("tool_call") == true })
    }

    @Test func nEchoLogitBiasAndFillInTheMiddle() {
        let n = outcome("/v1/completions", #"{"prompt": "ab", "n": 3, "echo": true, "logit_bias": {"97": -100, "98": 5}}"#)
        #expect(n.job?.choices == 3 && n.job?.echoText == "ab" && n.job?.request.logitBias == [97: -100, 98: 5])
        #expect(outcome("/v1/completions", #"{"prompt": "ab", "n": 9}"#).message.contains("'n'"))
        #expect(outcome("/v1/completions", #"{"prompt": "ab", "echo": true, "logprobs": 1}"#).message.contains("'echo'"))
        #expect(outcome("/v1/completions", #"{"prompt": "ab", "logit_bias": {"999": 1}}"#).message.contains("outside the vocabulary"))
        #expect(outcome("/completion", #"{"prompt": "ab", "logit_bias": [[97, false], ["b", 2]]}"#).job?.request.logitBias == [97: -.infinity, 98: 2])
        // No FIM tokens: 400; with them: prefix, suffix, middle.
        #expect(outcome("/v1/completions", #"{"prompt": "ab", "suffix": "cd"}"#).message.contains("no fill-in-the-middle tokens"))
        #expect(outcome("/infill", #"{"input_prefix": "ab", "input_suffix": "cd"}"#).status == 400)
        let fim = ModelBackend(service: service, codec: FIMCodec())
        #expect(outcome("/v1/completions", #"{"prompt": "ab", "suffix": "cd"}"#, backend: fim).job?.request.prompt == [257, 97, 98, 258, 99, 100, 259])
        #expect(outcome("/infill", #"{"input_prefix": "ab", "input_suffix": "c", "prompt": "x"}"#, backend: fim).job?.request.prompt == [257, 97, 98, 258, 99, 259, 120])
    }

    @Test func llamaServerRoutes() {
        let r = router()
        guard case let .response(props) = r.route(HTTPRequest(method: "GET", target: "/props"), backend: backend),
              case let .response(slots) = r.route(HTTPRequest(method: "GET", target: "/slots"), backend: backend),
              case let .response(models) = r.route(HTTPRequest(method: "GET", target: "/v1/models"), backend: backend),
              case let .response(page) = r.route(HTTPRequest(method: "GET", target: "/chat"), backend: backend) else {
            Issue.record("expected responses"); return
        }
        let p = try? JSON.parse(props.body)
        #expect(p?["default_generation_settings"]?["n_ctx"] == .int(64) && p?["model_alias"] == .string("test-model"))
        #expect((try? JSON.parse(slots.body))?.arrayValue != nil)
        #expect((try? JSON.parse(models.body))?["data"]?[0]?["context_length"] == .int(64))
        #expect(String(decoding: page.body, as: UTF8.self).contains("/v1/chat/completions"))
        let applied = outcome("/apply-template", #"{"messages": [{"role": "user", "content": "hey"}]}"#)
        #expect(applied.body?["prompt"] == .string("<user>hey<assistant>"))
        #expect(outcome("/apply-template", #"{"messages": [{"role": "user", "content": "hey"}], "temperature": 1}"#).status == 400)
    }
}
