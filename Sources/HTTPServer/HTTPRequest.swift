/// A complete HTTP request as the connection state machine hands it to the router.
public struct HTTPRequest: Sendable {
    /// `GET`, `POST`, ...
    public var method: String
    /// The request target as sent (`/v1/models?x=1`).
    public var target: String
    /// Header fields.
    public var headers: HTTPHeaders
    /// The full body (already de-chunked by http_parser).
    public var body: [UInt8]
    /// Whether the client wants the connection kept open after the response.
    public var keepAlive: Bool
    /// `(1, 1)` for HTTP/1.1.
    public var version: (major: Int, minor: Int)

    /// A request value, mostly for tests.
    public init(method: String, target: String, headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = [],
                keepAlive: Bool = true, version: (major: Int, minor: Int) = (1, 1)) {
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.keepAlive = keepAlive
        self.version = version
    }

    /// The path without the query string.
    public var path: String {
        if let q = target.firstIndex(of: "?") { return String(target[..<q]) }
        return target
    }
}
