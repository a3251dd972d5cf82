/// A piece of a response as routes and stream encoders produce it. A response is one `.head`,
/// any number of `.body`, then `.end`; a head whose headers carry no `Content-Length` is sent
/// with chunked transfer encoding (server-sent events).
public enum ResponsePart: Sendable {
    /// Status and headers.
    case head(status: Int, headers: HTTPHeaders)
    /// Body bytes.
    case body([UInt8])
    /// End of the response; `close` asks for the connection to be closed afterwards
    /// (an error in the middle of a stream).
    case end(close: Bool)

    /// The parts of a complete response.
    public static func complete(_ response: HTTPResponse) -> [ResponsePart] {
        var headers = response.headers
        headers.replace("Content-Length", String(response.body.count))
        return [.head(status: response.status, headers: headers), .body(response.body), .end(close: false)]
    }
}
