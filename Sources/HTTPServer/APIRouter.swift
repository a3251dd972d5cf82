import Foundation
import InferenceEngine

/// What a request turns into: an immediate response, or a generation to submit to the engine.
public enum RouteOutcome: Sendable {
    /// Answer now.
    case response(HTTPResponse)
    /// Submit to the engine and stream or collect its events.
    case generate(CompletionJob)
}

/// Maps requests to routes: authentication, method checks, body validation and the small
/// routes that need no engine. Pure apart from reading the backend; runs on worker threads.
public struct APIRouter: Sendable {
    /// The route table: path → (method, name used as the metrics label).
    static let routes: [String: (method: String, name: String)] = [
        "/v1/completions": ("POST", "/v1/completions"),
        "/completions": ("POST", "/v1/completions"),
        "/v1/chat/completions": ("POST", "/v1/chat/completions"),
        "/chat/completions": ("POST", "/v1/chat/completions"),
        "/completion": ("POST", "/completion"),
        "/tokenize": ("POST", "/tokenize"),
        "/detokenize": ("POST", "/detokenize"),
        "/v1/models": ("GET", "/v1/models"),
        "/models": ("GET", "/v1/models"),
        "/health": ("GET", "/health"),
        "/health/detail": ("GET", "/health/detail"),
        "/metrics": ("GET", "/metrics"),
        "/v1/stats": ("GET", "/v1/stats"),
        "/": ("GET", "/"),
        "/chat": ("GET", "/chat"),
        "/props": ("GET", "/props"),
        "/slots": ("GET", "/slots"),
        "/apply-template": ("POST", "/apply-template"),
        "/infill": ("POST", "/infill"),
    ]
    /// Routes reachable without an API key: health checks from load balancers, and the page
    /// itself (it holds no data; it asks for the key to read /v1/stats).
    /// `/health/detail` is open too: orchestrators read it without keys and it holds only load figures.
    static let openRoutes: Set<String> = ["/health", "/health/detail", "/", "/chat"]

    let config: ServerConfig
    let metrics: ServerMetrics

    /// A router for `config`, rendering `/metrics` from `metrics`.
    public init(config: ServerConfig, metrics: ServerMetrics) {
        self.config = config
        self.metrics = metrics
    }

    /// The metrics label of `request`'s route (`other` for unknown paths, to bound label values).
    public static func routeName(_ request: HTTPRequest) -> String {
        routes[request.path]?.name ?? "other"
    }

    /// CORS headers for a response to `request`, when CORS is configured and the origin allowed.
    public func corsHeaders(_ request: HTTPRequest) -> [(String, String)] {
        guard !config.corsAllowOrigins.isEmpty, let origin = request.headers["Origin"] else { return [] }
        if config.corsAllowOrigins.contains("*") { return [("Access-Control-Allow-Origin", "*")] }
        guard config.corsAllowOrigins.contains(origin) else { return [] }
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    }

    /// Compares without an early exit so the time taken says nothing about how much of a key matched.
    static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var diff = UInt8(truncatingIfNeeded: a.count ^ b.count)
        let n = max(a.count, b.count)
        for i in 0..<n {
            let x = i < a.count ? a[i] : 0
            let y = i < b.count ? b[i] : 0
            diff |= x ^ y
        }
        return diff == 0
    }

    /// Checks `Authorization: Bearer <key>` against every configured key (all are compared).
    func authorize(_ request: HTTPRequest) throws {
        guard !config.apiKeys.isEmpty else { return }
        guard let header = request.headers["Authorization"] else {
            throw APIError.unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        }
        let prefix = "bearer "
        guard header.count > prefix.count, header.lowercased().hasPrefix(prefix) else {
            throw APIError.unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        }
        let presented = Array(header.dropFirst(prefix.count).trimmingCharacters(in: .whitespaces).utf8)
        var ok = false
        for key in config.apiKeys where APIRouter.constantTimeEquals(presented, Array(key.utf8)) { ok = true }
        guard ok else { throw APIError.unauthorized("invalid API key") }
    }

    /// Routes one request. `backend` is nil while the model loads; `draining` is true after
    /// SIGTERM, when `/health` must send orchestrators elsewhere.
    public func route(_ request: HTTPRequest, backend: ModelBackend?, draining: Bool = false) -> RouteOutcome {
        do { return try routeThrowing(request, backend: backend, draining: draining) } catch let error as APIError {
            return .response(error.response)
        } catch {
            return .response(APIError.server("\(error)").response)
        }
    }

    func loading() -> APIError {
        APIError.overloaded("the model is still loading", retryAfterSeconds: config.retryAfterSeconds)
    }

    func routeThrowing(_ request: HTTPRequest, backend: ModelBackend?, draining: Bool = false) throws -> RouteOutcome {
        let path = request.path
        guard let route = APIRouter.routes[path] else { throw APIError.notFound(path) }
        if request.method == "OPTIONS", !config.corsAllowOrigins.isEmpty {
            var r = HTTPResponse(status: 204)
            r.headers.add("Access-Control-Allow-Methods", "\(route.method), OPTIONS")
            r.headers.add("Access-Control-Allow-Headers", "Authorization, Content-Type")
            r.headers.add("Access-Control-Max-Age", "600")
            r.headers.add("Content-Length", "0")
            return .response(r)
        }
        let methodMatches = request.method == route.method || (route.method == "GET" && request.method == "HEAD")
        guard methodMatches else { throw APIError.methodNotAllowed(request.method, path: path, allowed: [route.method]) }
        if !APIRouter.openRoutes.contains(route.name) { try authorize(request) }

        switch route.name {
        case "/health":
            guard backend != nil, !draining else {
                let message = draining ? "Draining: shutting down" : "Loading model"
                var e = APIError(status: 503, message: message, type: "unavailable_error")
                e.headers = [("Retry-After", String(config.retryAfterSeconds))]
                return .response(e.response)
            }
            return .response(.json(.object([("status", .string("ok"))])))
        case "/health/detail":
            return .response(healthDetail(backend: backend, draining: draining))
        case "/metrics":
            return .response(.text(metrics.exposition(), contentType: "text/plain; version=0.0.4; charset=utf-8"))
        case "/":
            return .response(.text(Dashboard.html, contentType: "text/html; charset=utf-8"))
        case "/chat":
            return .response(.text(ChatPage.html, contentType: "text/html; charset=utf-8"))
        case "/v1/stats":
            var stats = backend?.stats?.currentStats() ?? EngineStats()
            if stats.residentBytes == 0 { stats.residentBytes = ServerMetrics.residentSetBytes() ?? 0 }
            var json = stats.json
            if case var .object(members) = json {
                members.insert(("model", backend.map { .string($0.codec.modelName) } ?? .null), at: 0)
                members.insert(("ready", .bool(backend != nil)), at: 1)
                json = .object(members)
            }
            return .response(.json(json))
        default:
            break
        }

        guard let backend else { throw loading() }
        let codec = backend.codec
        switch route.name {
        case "/v1/models":
            let info = backend.info
            let model = JSON.object([("id", .string(codec.modelName)), ("object", .string("model")), ("created", .int(0)),
                                     ("owned_by", .string("moe-serve")),
                                     // vLLM's name for the context length, read by clients that size prompts.
                                     ("max_model_len", .int(codec.contextLength)),
                                     ("context_length", .int(codec.contextLength)),
                                     ("quantization", .string(info.quantization)),
                                     ("meta", .object([("n_ctx", .int(codec.contextLength)), ("n_vocab", .int(codec.vocabularySize)),
                                                       ("n_ctx_train", .int(info.trainedContextLength > 0 ? info.trainedContextLength : codec.contextLength)),
                                                       ("quantization", .string(info.quantization)),
                                                       ("architecture", .string(info.architecture))]))])
            return .response(.json(.object([("object", .string("list")), ("data", .array([model]))])))
        case "/props":
            return .response(.json(LlamaServerRoutes.props(backend)))
        case "/slots":
            return .response(.json(LlamaServerRoutes.slots(backend)))
        case "/apply-template":
            let f = try RequestFields(body: request.body)
            try f.rejectUnknown(["messages", "tools", "tool_choice", "parallel_tool_calls", "chat_template_kwargs", "model"], route: "/apply-template")
            let chat = try ChatRequest.parse(f, codec: BoundedCodec(codec: codec, maxPromptBytes: backend.maxPromptBytes))
            return .response(.json(.object([("prompt", .string(chat.rendered))])))
        case "/infill":
            return .generate(prepared(try CompletionJob.parseInfill(request.body, codec: codec, maxPromptBytes: backend.maxPromptBytes), backend))
        case "/tokenize":
            let f = try RequestFields(body: request.body)
            guard let content = try f.string("content") else { throw APIError.invalidRequest("field 'content' is required") }
            // Tokenizing costs ~30x the text in memory: text longer than a context's worth is refused.
            guard content.utf8.count <= backend.maxPromptBytes else {
                throw CompletionJob.promptTooLarge(bytes: content.utf8.count, limit: backend.maxPromptBytes, codec: codec)
            }
            let ids = codec.encode(content, addSpecialTokens: try f.bool("add_special") ?? false)
            if try f.bool("with_pieces") == true {
                let pieces = ids.map { JSON.object([("id", .int($0)), ("piece", .string(codec.decode([$0])))]) }
                return .response(.json(.object([("tokens", .array(pieces))])))
            }
            return .response(.json(.object([("tokens", .array(ids.map { .int($0) }))])))
        case "/detokenize":
            let f = try RequestFields(body: request.body)
            guard let value = f.value("tokens") else { throw APIError.invalidRequest("field 'tokens' is required") }
            guard let items = value.arrayValue else { throw f.wrongType("tokens", "an array of token ids") }
            let ids = try CompletionJob.tokenIds(items, key: "tokens", codec: codec)
            return .response(.json(.object([("content", .string(codec.decode(ids)))])))
        case "/v1/completions":
            return .generate(prepared(try CompletionJob.parse(request.body, flavor: .openAICompletion, codec: codec,
                                                              maxPromptBytes: backend.maxPromptBytes), backend))
        case "/v1/chat/completions":
            return .generate(prepared(try CompletionJob.parse(request.body, flavor: .openAIChat, codec: codec,
                                                              maxPromptBytes: backend.maxPromptBytes), backend))
        case "/completion":
            return .generate(prepared(try CompletionJob.parse(request.body, flavor: .llamaCompletion, codec: codec,
                                                              maxPromptBytes: backend.maxPromptBytes), backend))
        default:
            throw APIError.notFound(path)
        }
    }

    /// Attaches the engine-side token constraint of a job's grammar (the vocabulary trie is the
    /// backend's, built on the first constrained request).
    func prepared(_ job: CompletionJob, _ backend: ModelBackend) -> CompletionJob {
        guard let grammar = job.grammar else { return job }
        var job = job
        job.request.constraint = backend.grammarVocabulary.factory(grammar, endTokens: job.request.stopTokenIds)
        return job
    }

    /// `GET /health/detail`: the readiness of `/health` (same status code) with the figures an
    /// orchestrator or an operator wants when deciding where to send load: the memory budget,
    /// how full the expert cache is and how many requests wait.
    func healthDetail(backend: ModelBackend?, draining: Bool) -> HTTPResponse {
        let status = draining ? "draining" : (backend == nil ? "loading" : "ok")
        let stats = backend?.stats?.currentStats() ?? EngineStats()
        let fill = stats.cacheBytesBudget > 0 ? Double(stats.cacheBytesUsed) / Double(stats.cacheBytesBudget) : 0
        let body = JSON.object([
            ("status", .string(status)),
            ("model", backend.map { .string($0.codec.modelName) } ?? .null),
            ("memory_budget_bytes", .int(config.memoryBudget)),
            ("memory_budget_auto", .bool(config.memoryBudgetAuto)),
            ("resident_bytes", .int(stats.residentBytes > 0 ? stats.residentBytes : (ServerMetrics.residentSetBytes() ?? 0))),
            ("cache_bytes_used", .int(stats.cacheBytesUsed)),
            ("cache_bytes_budget", .int(stats.cacheBytesBudget)),
            ("cache_fill", .double(fill)),
            ("cache_hit_rate", .double(stats.cacheHitRate)),
            ("queue_depth", .int(stats.queuedRequests)),
            ("running_sequences", .int(stats.runningSequences)),
            ("max_queued_requests", .int(config.maxQueuedRequests)),
        ])
        var response = HTTPResponse.json(body)
        if status != "ok" {
            response.status = 503
            response.headers.add("Retry-After", String(config.retryAfterSeconds))
        }
        return response
    }
}
