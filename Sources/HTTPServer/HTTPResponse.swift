/// A complete (non-streaming) response.
public struct HTTPResponse: Sendable {
    /// The status code.
    public var status: Int
    /// Header fields; `Content-Length` and `Connection` are added when the head is written.
    public var headers: HTTPHeaders
    /// The body.
    public var body: [UInt8]

    /// A response with `body`.
    public init(status: Int, headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A JSON response.
    public static func json(_ value: JSON, status: Int = 200) -> HTTPResponse {
        var headers = HTTPHeaders()
        headers.add("Content-Type", "application/json")
        return HTTPResponse(status: status, headers: headers, body: value.bytes)
    }

    /// A plain-text or other typed response.
    public static func text(_ text: String, contentType: String = "text/plain; charset=utf-8", status: Int = 200) -> HTTPResponse {
        var headers = HTTPHeaders()
        headers.add("Content-Type", contentType)
        return HTTPResponse(status: status, headers: headers, body: Array(text.utf8))
    }

    /// The standard reason phrase of `status`.
    public static func reason(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 204: return "No Content"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 413: return "Content Too Large"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 503: return "Service Unavailable"
        case 505: return "HTTP Version Not Supported"
        default: return "Status \(status)"
        }
    }

    /// Serializes a status line and header block. `extra` comes from the connection
    /// (Connection, Content-Length or Transfer-Encoding) so routes never get framing wrong.
    static func serializeHead(status: Int, headers: HTTPHeaders) -> [UInt8] {
        var text = "HTTP/1.1 \(status) \(reason(status))\r\n"
        for field in headers { text += "\(field.name): \(field.value)\r\n" }
        text += "\r\n"
        return Array(text.utf8)
    }
}
