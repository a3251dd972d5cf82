import Foundation
import Testing
@testable import HTTPServer
import InferenceEngine

@Suite struct RouterTests {
    let service = ScriptedService()
    var backend: ModelBackend { ModelBackend(service: service, codec: ByteCodec()) }

    func router(_ configure: (inout ServerConfig) -> Void = { _ in }) -> APIRouter {
        var config = ServerConfig()
        configure(&config)
        return APIRouter(config: config, metrics: ServerMetrics())
    }

    func post(_ path: String, _ body: String, headers: [(String, String)] = []) -> HTTPRequest {
        HTTPRequest(method: "POST", target: path, headers: HTTPHeaders(headers), body: Array(body.utf8))
    }

    func response(_ outcome: RouteOutcome) -> (Int, JSON?) {
        guard case let .response(r) = outcome else { Issue.record("expected a response"); return (0, nil) }
        return (r.status, try? JSON.parse(r.body))
    }

    func job(_ outcome: RouteOutcome) -> CompletionJob? {
        if case let .generate(job) = outcome { return job }
        Issue.record("expected a generation: \(outcome)")
        return nil
    }

    @Test func healthIs503WhileLoadingThen200() {
        let r = router()
        let (loading, body) = response(r.route(HTTPRequest(method: "GET", target: "/health"), backend: nil))
        #expect(loading == 503)
        #expect(body?["error"]?["code"] == .int(503))
        #expect(response(r.route(HTTPRequest(method: "GET", target: "/health"), backend: backend)).0 == 200)
    }

    @Test func unknownRouteIs404AndWrongMethodIs405() {
        let r = router()
        let (s404, b404) = response(r.route(HTTPRequest(method: "GET", target: "/nope"), backend: backend))
        #expect(s404 == 404)
        #expect(b404?["error"]?["type"] == .string("not_found_error"))
        guard case let .response(resp) = r.route(HTTPRequest(method: "GET", target: "/v1/completions"), backend: backend) else { return }
        #expect(resp.status == 405)
        #expect(resp.headers["Allow"] == "POST")
    }

    @Test func malformedJSONAndWrongTypesAre400NamingTheField() {
        let r = router()
        let (s, b) = response(r.route(post("/v1/completions", "{\"prompt\": "), backend: backend))
        #expect(s == 400)
        #expect(b?["error"]?["message"]?.stringValue?.contains("not valid JSON") == true)
        let (s2, b2) = response(r.route(post("/v1/completions", "{\"prompt\":\"hi\",\"max_tokens\":\"ten\"}"), backend: backend))
        #expect(s2 == 400)
        #expect(b2?["error"]?["message"]?.stringValue?.contains("'max_tokens'") == true)
        let (s3, b3) = response(r.route(post("/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":5}]}"), backend: backend))
        #expect(s3 == 400)
        #expect(b3?["error"]?["message"]?.stringValue?.contains("messages[0].content") == true)
        let (s4, b4) = response(r.route(post("/completion", "{\"prompt\":\"hi\",\"temperature\":true}"), backend: backend))
        #expect(s4 == 400)
        #expect(b4?["error"]?["message"]?.stringValue?.contains("'temperature'") == true)
        let (s5, b5) = response(r.route(post("/v1/chat/completions", "{\"messages\":[],\"stream_options\":{\"include_usage\":1}}"), backend: backend))
        #expect(s5 == 400)
        #expect(b5?["error"]?["message"]?.stringValue?.contains("stream_options.include_usage") == true)
    }

    @Test func promptLongerThanContextNamesBothNumbers() {
        let r = router()
        let long = String(repeating: "a", count: 100)
        let (s, b) = response(r.route(post("/v1/completions", "{\"prompt\":\"\(long)\"}"), backend: backend))
        #expect(s == 400)
        let message = b?["error"]?["message"]?.stringValue ?? ""
        #expect(message.contains("100") && message.contains("64"))
    }

    @Test func openAICompletionFields() {
        let r = router()
        let body = "{\"model\":\"m\",\"prompt\":\"abc\",\"max_tokens\":5,\"temperature\":0,\"top_p\":0.5,\"stop\":[\"x\"],\"seed\":7,\"stream\":true,\"stream_options\":{\"include_usage\":true}}"
        guard let job = job(r.route(post("/v1/completions", body), backend: backend)) else { return }
        #expect(job.flavor == .openAICompletion)
        #expect(job.request.prompt == [97, 98, 99])
        #expect(job.request.maxTokens == 5)
        #expect(job.request.sampling.temperature == 0)
        #expect(job.request.sampling.topP == 0.5)
        #expect(job.request.sampling.seed == 7)
        #expect(job.request.stopStrings == ["x"])
        #expect(job.request.stopTokenIds == [256])
        #expect(job.stream && job.includeUsage)
        #expect(job.model == "m")
    }

    @Test func maxTokensIsClampedToTheContext() {
        let r = router()
        guard let job = job(r.route(post("/v1/completions", "{\"prompt\":[1,2,3],\"max_tokens\":1000}"), backend: backend)) else { return }
        #expect(job.request.prompt == [1, 2, 3])
        #expect(job.request.maxTokens == 61)
    }

    @Test func tokenIdsOutsideTheVocabularyAreRejected() {
        let (s, b) = response(router().route(post("/completion", "{\"prompt\":[1,9999]}"), backend: backend))
        #expect(s == 400)
        #expect(b?["error"]?["message"]?.stringValue?.contains("9999") == true)
    }

    @Test func chatIsRenderedWithTheTemplate() {
        let body = "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}]}"
        guard let job = job(router().route(post("/v1/chat/completions", body), backend: backend)) else { return }
        #expect(ByteCodec().decode(job.request.prompt) == "<system>s<user>hi<assistant>")
        #expect(job.flavor == .openAIChat)
    }

    @Test func llamaCompletionFieldsAndDefaults() {
        let body = "{\"prompt\":\"hi\",\"n_predict\":3,\"top_k\":5,\"min_p\":0.1,\"seed\":-1,\"stop\":[\"\\n\"]}"
        guard let job = job(router().route(post("/completion", body), backend: backend)) else { return }
        #expect(job.request.maxTokens == 3)
        #expect(job.request.sampling.topK == 5)
        #expect(job.request.sampling.minP == Float(0.1))
        #expect(job.request.sampling.temperature == Float(0.8))
        #expect(job.request.sampling.seed == nil)
        #expect(job.request.stopStrings == ["\n"])
        guard let unlimited = self.job(router().route(post("/completion", "{\"prompt\":\"hi\"}"), backend: backend)) else { return }
        #expect(unlimited.request.maxTokens == 62)
    }

    @Test func tokenizeAndDetokenize() {
        let r = router()
        let (s, b) = response(r.route(post("/tokenize", "{\"content\":\"hi\"}"), backend: backend))
        #expect(s == 200)
        #expect(b == .object([("tokens", .array([.int(104), .int(105)]))]))
        let (s2, b2) = response(r.route(post("/detokenize", "{\"tokens\":[104,105]}"), backend: backend))
        #expect(s2 == 200)
        #expect(b2?["content"] == .string("hi"))
    }

    @Test func modelsList() {
        let (s, b) = response(router().route(HTTPRequest(method: "GET", target: "/v1/models"), backend: backend))
        #expect(s == 200)
        #expect(b?["data"]?[0]?["id"] == .string("test-model"))
        #expect(b?["object"] == .string("list"))
    }

    @Test func apiKeys() {
        let r = router { $0.apiKeys = ["secret-1", "secret-2"] }
        let models = "/v1/models"
        #expect(response(r.route(HTTPRequest(method: "GET", target: models), backend: backend)).0 == 401)
        let wrong = HTTPRequest(method: "GET", target: models, headers: HTTPHeaders([("Authorization", "Bearer nope")]))
        #expect(response(r.route(wrong, backend: backend)).0 == 401)
        let right = HTTPRequest(method: "GET", target: models, headers: HTTPHeaders([("Authorization", "Bearer secret-2")]))
        #expect(response(r.route(right, backend: backend)).0 == 200)
        #expect(response(r.route(HTTPRequest(method: "GET", target: "/health"), backend: backend)).0 == 200)
        #expect(APIRouter.constantTimeEquals(Array("abc".utf8), Array("abc".utf8)))
        #expect(!APIRouter.constantTimeEquals(Array("abc".utf8), Array("abcd".utf8)))
    }

    @Test func corsOnlyWhenConfigured() {
        let request = HTTPRequest(method: "GET", target: "/health", headers: HTTPHeaders([("Origin", "http://a.example")]))
        #expect(router().corsHeaders(request).isEmpty)
        #expect(router { $0.corsAllowOrigins = ["http://a.example"] }.corsHeaders(request).first?.1 == "http://a.example")
        #expect(router { $0.corsAllowOrigins = ["http://b.example"] }.corsHeaders(request).isEmpty)
        let preflight = HTTPRequest(method: "OPTIONS", target: "/v1/completions", headers: HTTPHeaders([("Origin", "http://a.example")]))
        #expect(response(router { $0.corsAllowOrigins = ["*"] }.route(preflight, backend: backend)).0 == 204)
    }

    @Test func generationRoutesAre503WhileLoading() {
        let (s, _) = response(router().route(post("/v1/completions", "{\"prompt\":\"a\"}"), backend: nil))
        #expect(s == 503)
    }

    @Test func statsAndDashboard() {
        let withStats = ModelBackend(service: service, codec: ByteCodec(), stats: FakeStats())
        let (s, b) = response(router().route(HTTPRequest(method: "GET", target: "/v1/stats"), backend: withStats))
        #expect(s == 200)
        #expect(b?["ready"] == .bool(true))
        #expect(b?["cache_hit_rate"] == .double(0.83))
        #expect(b?["expert_usage"]?.arrayValue?.count == 16)
        guard case let .response(page) = router().route(HTTPRequest(method: "GET", target: "/"), backend: nil) else { return }
        let html = String(decoding: page.body, as: UTF8.self)
        #expect(page.headers["Content-Type"]?.hasPrefix("text/html") == true)
        #expect(html.contains("/v1/stats"))
        // No external assets: nothing is loaded from another origin.
        #expect(!html.contains("http://") && !html.contains("https://"))
    }

    /// Prompt text longer than the context can hold (context × the longest token's bytes) is
    /// refused before the tokenizer sees it, on every route that tokenizes a prompt.
    @Test func promptsThatCannotFitAreRefusedBeforeTokenizing() {
        let codec = CountingCodec(inner: ByteCodec(contextLength: 64))
        let backend = ModelBackend(service: service, codec: codec)
        #expect(backend.maxPromptBytes == 64 * 3)
        let long = String(repeating: "a", count: 64 * 3 + 1)
        let bodies: [(String, String)] = [
            ("/v1/completions", "{\"prompt\":\"\(long)\"}"),
            ("/v1/completions", "{\"prompt\":[\"\(long)\"]}"),
            ("/completion", "{\"prompt\":[\"\(long.prefix(100))\",\"\(long.prefix(100))\"]}"),
            ("/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"\(long.prefix(100))\"},{\"role\":\"user\",\"content\":\"\(long.prefix(100))\"}]}"),
            ("/tokenize", "{\"content\":\"\(long)\"}"),
        ]
        for (path, body) in bodies {
            let (status, json) = response(router().route(post(path, body), backend: backend))
            #expect(status == 400, "\(path)")
            #expect(json?["error"]?["message"]?.stringValue?.contains("more than the context length of 64 tokens can hold") == true, "\(path): \(String(describing: json))")
        }
        #expect(codec.encodeCalls == 0)
        // At the bound the tokenizer runs (and the token count decides).
        _ = router().route(post("/tokenize", "{\"content\":\"\(long.dropLast())\"}"), backend: backend)
        #expect(codec.encodeCalls == 1)
    }
}

/// A codec that counts how often it tokenizes.
final class CountingCodec: PromptCodec, @unchecked Sendable {
    let inner: ByteCodec
    private let lock = NSLock()
    private var calls = 0
    init(inner: ByteCodec) { self.inner = inner }
    var encodeCalls: Int { lock.lock(); defer { lock.unlock() }; return calls }
    func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        lock.lock(); calls += 1; lock.unlock()
        return inner.encode(text, addSpecialTokens: addSpecialTokens)
    }
    func decode(_ ids: [Int]) -> String { inner.decode(ids) }
    func renderChat(_ messages: [ChatTurn]) throws -> String { try inner.renderChat(messages) }
    var contextLength: Int { inner.contextLength }
    var vocabularySize: Int { inner.vocabularySize }
    var modelName: String { inner.modelName }
    var stopTokenIds: Set<Int> { inner.stopTokenIds }
}
