/// What the connection state machine asks its owner (the libuv glue, or a test) to do.
public enum ConnectionAction: Sendable, Equatable {
    /// Write bytes to the socket, in order.
    case write([UInt8])
    /// Route a complete request; its response comes back through `respond(_:_:)` with this id.
    case startRequest(UInt64, HTTPRequest)
    /// The request's client is gone: cancel its generation.
    case cancel(UInt64)
    /// Stop reading until `.resumeReading` (too many pipelined requests waiting).
    case pauseReading
    /// Read again.
    case resumeReading
    /// Close the socket (after the writes before it are flushed).
    case close
    /// The connection itself answered with an error before any route saw a request (malformed
    /// HTTP 400, timeouts 408, body 413, headers 431): count it.
    case rejected(status: Int)

    /// Structural equality; requests compare by method and target (enough for tests).
    public static func == (a: ConnectionAction, b: ConnectionAction) -> Bool {
        switch (a, b) {
        case let (.write(x), .write(y)): return x == y
        case let (.startRequest(x, r), .startRequest(y, s)): return x == y && r.target == s.target && r.method == s.method
        case let (.cancel(x), .cancel(y)): return x == y
        case (.pauseReading, .pauseReading), (.resumeReading, .resumeReading), (.close, .close): return true
        case let (.rejected(x), .rejected(y)): return x == y
        default: return false
        }
    }
}

/// The HTTP/1.1 logic of one connection, without sockets: bytes and responses in, actions out.
///
/// Pipelined requests are started as soon as they are parsed (so the engine can work on them
/// concurrently) but their responses are written strictly in request order: output of a later
/// response is buffered until every earlier one has ended.
public struct ConnectionStateMachine {
    /// One request awaiting (or writing) its response.
    struct Slot {
        let id: UInt64
        let keepAlive: Bool
        let isHeadMethod: Bool
        let http10: Bool
        var output: [UInt8] = []
        var headWritten = false
        var chunked = false
        var ended = false
        var closeAfter = false
        /// The response was produced by the state machine itself (an error), not by a route.
        let local: Bool
    }

    private let limits: ConnectionLimits
    private let parser: RequestParser
    private var slots: [Slot] = []
    private var nextID: UInt64 = 1
    /// No more requests are read (a parse error, `Connection: close`, or shutdown).
    private var stoppedReading = false
    private var draining = false
    private var paused = false
    /// Set once `.close` was emitted; every later input is ignored.
    public private(set) var isClosed = false
    private var messageStart: Double = 0
    private var lastActivity: Double
    /// When bytes last arrived: a request in progress that stays silent longer than the header
    /// timeout is answered 408 (a body that stopped arriving, a slowloris trickle).
    private var lastReceive: Double
    private var pendingContinue = false
    /// Requests read on this connection (for the keep-alive limit).
    private var requestCount = 0
    /// The client half-closed (EOF): answer what it sent, then close.
    private var peerDone = false

    /// A machine for a connection accepted at `now` (seconds on a monotonic clock).
    public init(limits: ConnectionLimits, now: Double = 0) {
        self.limits = limits
        self.parser = RequestParser(maxHeaderBytes: limits.maxHeaderBytes, maxBodyBytes: limits.maxBodyBytes)
        self.lastActivity = now
        self.lastReceive = now
    }

    /// Requests started whose responses have not ended.
    public var openRequestIDs: [UInt64] { slots.filter { !$0.ended && !$0.local }.map(\.id) }

    /// Whether nothing is in flight (used by shutdown to know when a connection is done).
    public var isIdle: Bool { slots.isEmpty && !parser.inMessage }

    /// Bytes of a partly received request held by the parser (head and body so far).
    public var bufferedRequestBytes: Int { isClosed ? 0 : parser.heldBytes }

    /// Bytes arrived from the client.
    public mutating func receive(_ bytes: [UInt8], now: Double) -> [ConnectionAction] {
        guard !isClosed, !stoppedReading else { return [] }
        lastActivity = now
        lastReceive = now
        if !parser.inMessage { messageStart = now }
        var continueWanted = false
        parser.onHeaders { headers in
            if headers["Expect"]?.lowercased() == "100-continue" { continueWanted = true }
        }
        let result = parser.feed(bytes)
        var actions: [ConnectionAction] = []
        if continueWanted, slots.isEmpty, parser.inMessage {
            // Only when nothing else is being written, or the interim response would interleave.
            actions.append(.write(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)))
        }
        switch result {
        case let .success(requests):
            for request in requests where !stoppedReading {
                let id = nextID
                nextID += 1
                requestCount += 1
                let keepAlive = request.keepAlive && !draining && requestCount < limits.maxRequestsPerConnection
                slots.append(Slot(id: id, keepAlive: keepAlive, isHeadMethod: request.method == "HEAD",
                                  http10: request.version.major == 1 && request.version.minor == 0, local: false))
                actions.append(.startRequest(id, request))
                if !keepAlive { stoppedReading = true }
            }
            if let failure = parser.pendingFailure, !stoppedReading {
                actions += fail(with: APIError.from(failure))
            }
        case let .failure(failure):
            actions += fail(with: APIError.from(failure))
        }
        if !paused, !stoppedReading, slots.count >= limits.maxPipelined {
            paused = true
            actions.append(.pauseReading)
        }
        return actions
    }

    /// Refuses whatever this connection is sending with `error` (the server's request memory is
    /// full, or the connection cap was reached with nothing idle to shed): answered after the
    /// responses already in flight, then the connection closes.
    public mutating func reject(_ error: APIError) -> [ConnectionAction] {
        guard !isClosed, !stoppedReading else { return [] }
        return fail(with: error)
    }

    /// The client closed its sending side (EOF). A request cut short is answered 400; requests
    /// already read are answered; then the connection closes.
    public mutating func peerFinishedSending(now: Double) -> [ConnectionAction] {
        guard !isClosed else { return [] }
        peerDone = true
        if parser.inMessage, !stoppedReading {
            return fail(with: APIError(status: 400, message: "malformed HTTP request: the connection ended in the middle of a request",
                                       type: "invalid_request_error"))
        }
        stoppedReading = true
        if slots.isEmpty {
            isClosed = true
            return [.close]
        }
        return []
    }

    /// Answers with an error generated here (parse failure or timeout) and closes after it.
    private mutating func fail(with error: APIError) -> [ConnectionAction] {
        stoppedReading = true
        let id = nextID
        nextID += 1
        slots.append(Slot(id: id, keepAlive: false, isHeadMethod: false, http10: false, local: true))
        return [.rejected(status: error.status)] + respond(id, ResponsePart.complete(error.response))
    }

    /// Response parts for request `id` (from a route or a generation stream).
    public mutating func respond(_ id: UInt64, _ parts: [ResponsePart], now: Double? = nil) -> [ConnectionAction] {
        guard !isClosed, let index = slots.firstIndex(where: { $0.id == id }) else { return [] }
        if let now { lastActivity = now }
        for part in parts { serialize(part, into: &slots[index]) }
        return flush()
    }

    private func frameChunk(_ bytes: [UInt8]) -> [UInt8] {
        Array(String(bytes.count, radix: 16).utf8) + [13, 10] + bytes + [13, 10]
    }

    private func serialize(_ part: ResponsePart, into slot: inout Slot) {
        guard !slot.ended else { return }
        switch part {
        case let .head(status, headers):
            guard !slot.headWritten else { return }
            slot.headWritten = true
            var headers = headers
            let closing = !slot.keepAlive || draining
            if !headers.contains("Content-Length") {
                if slot.http10 {
                    // HTTP/1.0 has no chunked encoding: the end of the body is the end of the connection.
                    slot.closeAfter = true
                } else {
                    slot.chunked = true
                    headers.replace("Transfer-Encoding", "chunked")
                }
            }
            if closing { slot.closeAfter = true }
            headers.replace("Connection", slot.closeAfter ? "close" : "keep-alive")
            slot.output += HTTPResponse.serializeHead(status: status, headers: headers)
        case let .body(bytes):
            guard slot.headWritten, !bytes.isEmpty, !slot.isHeadMethod else { return }
            slot.output += slot.chunked ? frameChunk(bytes) : bytes
        case let .end(close):
            guard slot.headWritten else { return }
            if slot.chunked { slot.output += Array("0\r\n\r\n".utf8) }
            slot.ended = true
            if close { slot.closeAfter = true }
        }
    }

    /// Writes whatever the head-of-line responses have produced, in order.
    private mutating func flush() -> [ConnectionAction] {
        var actions: [ConnectionAction] = []
        while let first = slots.first {
            if !first.output.isEmpty {
                actions.append(.write(first.output))
                slots[0].output = []
            }
            guard first.ended else { break }
            slots.removeFirst()
            if first.closeAfter {
                // Requests pipelined behind a closing response will never be answered.
                actions += slots.filter { !$0.ended && !$0.local }.map { .cancel($0.id) }
                slots.removeAll()
                isClosed = true
                actions.append(.close)
                return actions
            }
        }
        if slots.isEmpty, draining || peerDone, !parser.inMessage || peerDone {
            isClosed = true
            actions.append(.close)
        }
        if paused, !stoppedReading, slots.count < limits.maxPipelined {
            paused = false
            actions.append(.resumeReading)
        }
        return actions
    }

    /// The client closed or reset the connection: cancel everything it was waiting for.
    public mutating func peerClosed() -> [ConnectionAction] {
        guard !isClosed else { return [] }
        isClosed = true
        let cancels = slots.filter { !$0.ended && !$0.local }.map { ConnectionAction.cancel($0.id) }
        slots.removeAll()
        return cancels + [.close]
    }

    /// Graceful shutdown: finish the responses in flight, read no new requests, then close.
    public mutating func beginDrain() -> [ConnectionAction] {
        guard !isClosed else { return [] }
        draining = true
        if slots.isEmpty {
            isClosed = true
            return [.close]
        }
        stoppedReading = true
        return []
    }

    /// Checks the timeouts; call periodically with the current monotonic time.
    public mutating func tick(now: Double) -> [ConnectionAction] {
        guard !isClosed else { return [] }
        if parser.inMessage, !stoppedReading {
            let elapsed = now - messageStart
            if !parser.headComplete, elapsed > limits.headerTimeout {
                return fail(with: APIError(status: 408, message: "request headers not received within \(limits.headerTimeout) s",
                                           type: "invalid_request_error"))
            }
            if now - lastReceive > limits.headerTimeout {
                return fail(with: APIError(status: 408, message: "no bytes of the request received for \(limits.headerTimeout) s",
                                           type: "invalid_request_error"))
            }
            if elapsed > limits.requestTimeout {
                return fail(with: APIError(status: 408, message: "request not received within \(limits.requestTimeout) s",
                                           type: "invalid_request_error"))
            }
        }
        if slots.isEmpty, !parser.inMessage, now - lastActivity > limits.idleTimeout {
            isClosed = true
            return [.close]
        }
        return []
    }
}
