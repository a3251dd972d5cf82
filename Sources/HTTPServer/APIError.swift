/// An error answered as `{"error": {"message", "type", "code"}}` with `code` the HTTP status,
/// the shape the `openai` client turns into its typed exceptions.
public struct APIError: Error, Sendable, Equatable, CustomStringConvertible {
    /// HTTP status.
    public var status: Int
    /// Human-readable, names the offending field or limit.
    public var message: String
    /// OpenAI-style error type (`invalid_request_error`, ...).
    public var type: String
    /// Extra headers (`Retry-After`, `Allow`, `WWW-Authenticate`).
    public var headers: [(String, String)] = []

    /// Equal when status, message and type are (headers are derived from those).
    public static func == (a: APIError, b: APIError) -> Bool {
        a.status == b.status && a.message == b.message && a.type == b.type
    }

    /// An error with an explicit status and type.
    public init(status: Int, message: String, type: String, headers: [(String, String)] = []) {
        self.status = status
        self.message = message
        self.type = type
        self.headers = headers
    }

    /// `status type: message`, for logs.
    public var description: String { "\(status) \(type): \(message)" }

    /// 400 for a request the client must fix.
    public static func invalidRequest(_ message: String) -> APIError {
        APIError(status: 400, message: message, type: "invalid_request_error")
    }
    /// 404 for an unknown route.
    public static func notFound(_ path: String) -> APIError {
        APIError(status: 404, message: "no route for \(path)", type: "not_found_error")
    }
    /// 405 with the methods the route accepts in `Allow`.
    public static func methodNotAllowed(_ method: String, path: String, allowed: [String]) -> APIError {
        APIError(status: 405, message: "method \(method) is not allowed for \(path); use \(allowed.joined(separator: ", "))",
                 type: "invalid_request_error", headers: [("Allow", allowed.joined(separator: ", "))])
    }
    /// 401 for a missing or wrong API key.
    public static func unauthorized(_ message: String) -> APIError {
        APIError(status: 401, message: message, type: "authentication_error", headers: [("WWW-Authenticate", "Bearer")])
    }
    /// 503 with `Retry-After` when the queue is full.
    public static func overloaded(_ message: String, retryAfterSeconds: Int) -> APIError {
        APIError(status: 503, message: message, type: "server_overloaded_error",
                 headers: [("Retry-After", String(retryAfterSeconds))])
    }
    /// 500 for a failure of the server or engine.
    public static func server(_ message: String) -> APIError {
        APIError(status: 500, message: message, type: "server_error")
    }

    /// The JSON error object.
    public var json: JSON {
        .object([("error", .object([("message", .string(message)), ("type", .string(type)), ("code", .int(status))]))])
    }

    /// The error as a complete response.
    public var response: HTTPResponse {
        var r = HTTPResponse.json(json, status: status)
        for (name, value) in headers { r.headers.add(name, value) }
        return r
    }

    /// The error a request parse failure is answered with.
    public static func from(_ failure: RequestParseFailure) -> APIError {
        switch failure {
        case let .headersTooLarge(limit):
            return APIError(status: 431, message: "request line and headers exceed the limit of \(limit) bytes",
                            type: "invalid_request_error")
        case let .bodyTooLarge(limit):
            return APIError(status: 413, message: "request body exceeds the limit of \(limit) bytes", type: "invalid_request_error")
        case let .malformed(reason):
            return APIError(status: 400, message: "malformed HTTP request: \(reason)", type: "invalid_request_error")
        case let .unsupported(reason):
            return APIError(status: 501, message: reason, type: "invalid_request_error")
        }
    }
}
