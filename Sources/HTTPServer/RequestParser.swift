import CHTTPParser

/// Why the bytes of a connection cannot be turned into requests; each maps to a final response.
public enum RequestParseFailure: Error, Equatable, Sendable {
    /// The request line and headers exceed the header limit (431).
    case headersTooLarge(limit: Int)
    /// The body exceeds the body limit (413).
    case bodyTooLarge(limit: Int)
    /// Not HTTP/1.x (400), with http_parser's description.
    case malformed(String)
    /// `Upgrade`/`CONNECT`, which this server does not speak (501).
    case unsupported(String)
}

/// Incremental HTTP/1.x request parsing on top of http_parser. Bytes go in, complete requests
/// come out; pipelined requests in one read come out in order. Not thread-safe: one per connection.
final class RequestParser {
    private let parser: UnsafeMutablePointer<http_parser>
    private var settings = http_parser_settings()
    private let maxHeaderBytes: Int
    private let maxBodyBytes: Int

    // The request being assembled.
    private var url: [UInt8] = []
    private var headerName: [UInt8] = []
    private var headerValue: [UInt8] = []
    private var lastWasValue = false
    private var headers = HTTPHeaders()
    private var body: [UInt8] = []
    private var headerBytes = 0
    private var completed: [HTTPRequest] = []
    private var failure: RequestParseFailure?
    private var headerHook: ((HTTPHeaders) -> Void)?

    /// True between the first byte of a request and its end (drives the header/request timeouts).
    private(set) var inMessage = false
    /// True once the current request's head is complete (its body may still be arriving).
    private(set) var headComplete = false

    /// - Parameters:
    ///   - maxHeaderBytes: bound on request line + header bytes, 431 beyond.
    ///   - maxBodyBytes: bound on the body, 413 beyond (checked against Content-Length before
    ///     reading the body, and as chunks arrive).
    init(maxHeaderBytes: Int, maxBodyBytes: Int) {
        self.maxHeaderBytes = maxHeaderBytes
        self.maxBodyBytes = maxBodyBytes
        parser = .allocate(capacity: 1)
        http_parser_init(parser, HTTP_REQUEST)
        http_parser_settings_init(&settings)
        settings.on_message_begin = { p in
            let me = RequestParser.from(p)
            me.inMessage = true
            me.headComplete = false
            me.url = []; me.headerName = []; me.headerValue = []; me.lastWasValue = false
            me.headers = HTTPHeaders(); me.body = []; me.headerBytes = 0
            return 0
        }
        settings.on_url = { p, at, length in
            let me = RequestParser.from(p)
            guard me.countHeaderBytes(length) else { return 1 }
            me.url.append(contentsOf: UnsafeRawBufferPointer(start: at, count: length))
            return 0
        }
        settings.on_header_field = { p, at, length in
            let me = RequestParser.from(p)
            guard me.countHeaderBytes(length) else { return 1 }
            if me.lastWasValue { me.flushHeader() }
            me.headerName.append(contentsOf: UnsafeRawBufferPointer(start: at, count: length))
            me.lastWasValue = false
            return 0
        }
        settings.on_header_value = { p, at, length in
            let me = RequestParser.from(p)
            guard me.countHeaderBytes(length) else { return 1 }
            me.headerValue.append(contentsOf: UnsafeRawBufferPointer(start: at, count: length))
            me.lastWasValue = true
            return 0
        }
        settings.on_headers_complete = { p in
            let me = RequestParser.from(p)
            if me.lastWasValue || !me.headerName.isEmpty { me.flushHeader() }
            me.headComplete = true
            let pointee = p!.pointee
            if pointee.upgrade != 0 || pointee.method == HTTP_CONNECT.rawValue {
                me.failure = .unsupported("protocol upgrades and CONNECT are not supported")
                // Not 1 or 2: from on_headers_complete those mean "no body" / "upgrade", not an error.
                return -1
            }
            // Content-Length is known before the body arrives: refuse early instead of reading it.
            if me.headers.contains("Content-Length"), pointee.content_length > UInt64(me.maxBodyBytes) {
                me.failure = .bodyTooLarge(limit: me.maxBodyBytes)
                return -1
            }
            me.headerHook?(me.headers)
            return 0
        }
        settings.on_body = { p, at, length in
            let me = RequestParser.from(p)
            if me.body.count + length > me.maxBodyBytes {
                me.failure = .bodyTooLarge(limit: me.maxBodyBytes)
                return 1
            }
            me.body.append(contentsOf: UnsafeRawBufferPointer(start: at, count: length))
            return 0
        }
        settings.on_message_complete = { p in
            let me = RequestParser.from(p)
            let pointee = p!.pointee
            let method = String(cString: http_method_str(http_method(rawValue: pointee.method)))
            let request = HTTPRequest(
                method: method, target: String(decoding: me.url, as: UTF8.self), headers: me.headers, body: me.body,
                keepAlive: http_should_keep_alive(p) != 0,
                version: (Int(pointee.http_major), Int(pointee.http_minor)))
            me.completed.append(request)
            me.inMessage = false
            me.headComplete = false
            me.body = []
            return 0
        }
        parser.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit { parser.deallocate() }

    private static func from(_ p: UnsafeMutablePointer<http_parser>?) -> RequestParser {
        Unmanaged<RequestParser>.fromOpaque(p!.pointee.data).takeUnretainedValue()
    }

    private func countHeaderBytes(_ n: Int) -> Bool {
        headerBytes += n
        if headerBytes > maxHeaderBytes {
            failure = .headersTooLarge(limit: maxHeaderBytes)
            return false
        }
        return true
    }

    private func flushHeader() {
        headers.add(String(decoding: headerName, as: UTF8.self), String(decoding: headerValue, as: UTF8.self))
        headerName = []
        headerValue = []
        lastWasValue = false
    }

    /// Called with the headers of each request as soon as they are complete (for `Expect: 100-continue`).
    func onHeaders(_ hook: @escaping (HTTPHeaders) -> Void) { headerHook = hook }

    /// Feeds bytes; returns the requests completed by them, or the failure that ends the connection.
    /// After a failure every later call returns the same failure.
    func feed(_ bytes: [UInt8]) -> Result<[HTTPRequest], RequestParseFailure> {
        if let failure { return .failure(failure) }
        let consumed = bytes.withUnsafeBufferPointer { buffer -> Int in
            buffer.withMemoryRebound(to: CChar.self) { chars in
                http_parser_execute(parser, &settings, chars.baseAddress, chars.count)
            }
        }
        let errno = http_errno(rawValue: parser.pointee.http_errno)
        if failure == nil, errno != HPE_OK {
            failure = errno == HPE_HEADER_OVERFLOW
                ? .headersTooLarge(limit: maxHeaderBytes)
                : .malformed(String(cString: http_errno_description(errno)))
        } else if failure == nil, consumed != bytes.count, parser.pointee.upgrade != 0 {
            failure = .unsupported("protocol upgrades are not supported")
        }
        let done = completed
        completed = []
        if let failure {
            // Requests completed before the bad bytes are still answered, then the error.
            return done.isEmpty ? .failure(failure) : .success(done)
        }
        return .success(done)
    }

    /// The failure, once one happened.
    var pendingFailure: RequestParseFailure? { failure }

    /// Bytes of the request being assembled that this parser holds (head and body so far); the
    /// server counts them against its request-memory cap.
    var heldBytes: Int { inMessage ? headerBytes + body.count : 0 }
}
