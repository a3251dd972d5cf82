import Testing
@testable import HTTPServer

@Suite struct ConnectionStateMachineTests {
    func started(_ actions: [ConnectionAction]) -> [(UInt64, HTTPRequest)] {
        actions.compactMap { if case let .startRequest(id, r) = $0 { return (id, r) }; return nil }
    }

    @Test func parsesOneRequestAndKeepsAlive() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        let actions = m.receive(Raw.bytes("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"), now: 0)
        let reqs = started(actions)
        #expect(reqs.count == 1)
        #expect(reqs[0].1.path == "/health")
        #expect(reqs[0].1.keepAlive)
        let out = m.respond(reqs[0].0, ResponsePart.complete(.text("ok")))
        let text = Raw.text(out)
        #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(text.contains("Content-Length: 2\r\n"))
        #expect(text.contains("Connection: keep-alive\r\n"))
        #expect(text.hasSuffix("\r\n\r\nok"))
        #expect(!out.contains(.close))
        // A second request on the same connection.
        #expect(started(m.receive(Raw.bytes("GET /b HTTP/1.1\r\n\r\n"), now: 1)).count == 1)
    }

    @Test func pipelinedResponsesAreWrittenInRequestOrder() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        let actions = m.receive(Raw.bytes("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n"), now: 0)
        let reqs = started(actions)
        #expect(reqs.map(\.1.path) == ["/a", "/b", "/c"])
        // The third answers first, then the second: nothing may be written before the first.
        #expect(Raw.text(m.respond(reqs[2].0, ResponsePart.complete(.text("C"))) ).isEmpty)
        #expect(Raw.text(m.respond(reqs[1].0, [.head(status: 200, headers: HTTPHeaders()), .body(Raw.bytes("B1"))])).isEmpty)
        let first = Raw.text(m.respond(reqs[0].0, ResponsePart.complete(.text("A"))))
        // A, then B's buffered head and first chunk; C waits for B's end.
        #expect(first.contains("\r\n\r\nA"))
        #expect(first.contains("Transfer-Encoding: chunked"))
        #expect(first.hasSuffix("2\r\nB1\r\n"))
        #expect(!first.contains("\r\n\r\nC"))
        let rest = Raw.text(m.respond(reqs[1].0, [.body(Raw.bytes("B2")), .end(close: false)]))
        #expect(rest.hasPrefix("2\r\nB2\r\n0\r\n\r\n"))
        #expect(rest.hasSuffix("\r\n\r\nC"))
    }

    @Test func requestSplitAcrossReads() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        let full = Raw.post("/tokenize", "{\"content\":\"hi\"}")
        var reqs: [(UInt64, HTTPRequest)] = []
        for byte in full.utf8 { reqs += started(m.receive([byte], now: 0)) }
        #expect(reqs.count == 1)
        #expect(String(decoding: reqs[0].1.body, as: UTF8.self) == "{\"content\":\"hi\"}")
    }

    @Test func connectionCloseRequestClosesAfterResponse() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        let reqs = started(m.receive(Raw.bytes("GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n"), now: 0))
        #expect(reqs.count == 1)
        let out = m.respond(reqs[0].0, ResponsePart.complete(.text("x")))
        #expect(Raw.text(out).contains("Connection: close\r\n"))
        #expect(out.last == .close)
    }

    @Test func http10ClosesByDefault() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        let reqs = started(m.receive(Raw.bytes("GET /a HTTP/1.0\r\n\r\n"), now: 0))
        let out = m.respond(reqs[0].0, ResponsePart.complete(.text("x")))
        #expect(out.last == .close)
    }

    @Test func bodyOverLimitIs413() {
        var limits = ConnectionLimits()
        limits.maxBodyBytes = 10
        var m = ConnectionStateMachine(limits: limits)
        let out = m.receive(Raw.bytes(Raw.post("/completion", String(repeating: "x", count: 11))), now: 0)
        #expect(started(out).isEmpty)
        let text = Raw.text(out)
        #expect(text.hasPrefix("HTTP/1.1 413 "))
        #expect(text.contains("\"code\":413"))
        #expect(out.last == .close)
        #expect(out.contains(.rejected(status: 413)), "the server counts connection-level errors from this action")
    }

    @Test func chunkedBodyOverLimitIs413() {
        var limits = ConnectionLimits()
        limits.maxBodyBytes = 10
        var m = ConnectionStateMachine(limits: limits)
        let out = m.receive(Raw.bytes("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"), now: 0)
        #expect(Raw.text(out).hasPrefix("HTTP/1.1 413 "))
    }

    @Test func headersOverLimitAre431() {
        var limits = ConnectionLimits()
        limits.maxHeaderBytes = 100
        var m = ConnectionStateMachine(limits: limits)
        let out = m.receive(Raw.bytes("GET / HTTP/1.1\r\nX-Big: \(String(repeating: "a", count: 200))\r\n\r\n"), now: 0)
        #expect(Raw.text(out).hasPrefix("HTTP/1.1 431 "))
        #expect(out.last == .close)
        #expect(out.contains(.rejected(status: 431)))
    }

    @Test func malformedRequestIs400AndCloses() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        let out = m.receive(Raw.bytes("HELLO\r\n\r\n"), now: 0)
        #expect(Raw.text(out).hasPrefix("HTTP/1.1 400 "))
        #expect(out.last == .close)
    }

    @Test func errorAfterAGoodPipelinedRequestWaitsForItsTurn() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        let out = m.receive(Raw.bytes("GET /a HTTP/1.1\r\n\r\nBROKEN\r\n\r\n"), now: 0)
        let reqs = started(out)
        #expect(reqs.count == 1)
        #expect(Raw.text(out).isEmpty)
        let after = m.respond(reqs[0].0, ResponsePart.complete(.text("A")))
        let text = Raw.text(after)
        #expect(text.hasPrefix("HTTP/1.1 200 "))
        #expect(text.contains("HTTP/1.1 400 "))
        #expect(after.last == .close)
    }

    @Test func peerCloseCancelsOpenRequests() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        let reqs = started(m.receive(Raw.bytes("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"), now: 0))
        _ = m.respond(reqs[0].0, [.head(status: 200, headers: HTTPHeaders()), .body([65])])
        let out = m.peerClosed()
        #expect(out == [.cancel(reqs[0].0), .cancel(reqs[1].0), .close])
        #expect(m.isClosed)
        #expect(m.receive([65], now: 1).isEmpty)
    }

    @Test func midStreamErrorClosesAfterTheEvent() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        let reqs = started(m.receive(Raw.bytes("GET /a HTTP/1.1\r\n\r\n"), now: 0))
        let out = m.respond(reqs[0].0, [.head(status: 200, headers: HTTPHeaders()), .body(Raw.bytes("data: x\n\n")), .end(close: true)])
        #expect(Raw.text(out).hasSuffix("0\r\n\r\n"))
        #expect(out.last == .close)
    }

    @Test func timeouts() {
        var limits = ConnectionLimits()
        limits.headerTimeout = 5
        limits.idleTimeout = 30
        limits.requestTimeout = 20
        var m = ConnectionStateMachine(limits: limits, now: 0)
        #expect(m.tick(now: 10).isEmpty)
        #expect(m.tick(now: 31) == [.close])

        var slow = ConnectionStateMachine(limits: limits, now: 0)
        _ = slow.receive(Raw.bytes("GET / HTTP/1.1\r\nHost"), now: 1)
        #expect(slow.tick(now: 4).isEmpty)
        let out = slow.tick(now: 7)
        #expect(Raw.text(out).hasPrefix("HTTP/1.1 408 "))
        #expect(out.last == .close)

        // A body that keeps trickling in (a byte every 4 s) is cut off by the request timeout.
        var slowBody = ConnectionStateMachine(limits: limits, now: 0)
        _ = slowBody.receive(Raw.bytes("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n12"), now: 1)
        _ = slowBody.receive(Raw.bytes("3"), now: 5)
        _ = slowBody.receive(Raw.bytes("4"), now: 9)
        #expect(slowBody.tick(now: 10).isEmpty)
        _ = slowBody.receive(Raw.bytes("5"), now: 13)
        _ = slowBody.receive(Raw.bytes("6"), now: 17)
        _ = slowBody.receive(Raw.bytes("7"), now: 21)
        #expect(Raw.text(slowBody.tick(now: 22)).hasPrefix("HTTP/1.1 408 "))
    }

    /// A request that goes silent mid-body is answered 408 after the header timeout, not after
    /// the (longer) request timeout: nothing waits longer than that for bytes.
    @Test func stalledBodyIs408AfterTheHeaderTimeout() {
        var limits = ConnectionLimits()
        limits.headerTimeout = 5
        limits.requestTimeout = 60
        var m = ConnectionStateMachine(limits: limits, now: 0)
        _ = m.receive(Raw.bytes("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n12"), now: 1)
        #expect(m.tick(now: 5.5).isEmpty)
        let out = m.tick(now: 6.5)
        let text = Raw.text(out)
        #expect(text.hasPrefix("HTTP/1.1 408 "))
        #expect(text.contains("\"code\":408"))
        #expect(out.first == .rejected(status: 408))
        #expect(out.last == .close)
    }

    /// The client half-closes (EOF) in the middle of a request: 400 with a JSON body, then close.
    @Test func halfCloseMidRequestIs400() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        _ = m.receive(Raw.bytes("POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nab"), now: 0)
        #expect(m.bufferedRequestBytes > 0)
        let out = m.peerFinishedSending(now: 1)
        let text = Raw.text(out)
        #expect(text.hasPrefix("HTTP/1.1 400 "))
        #expect(text.contains("Connection: close"))
        #expect(text.contains("\"type\":\"invalid_request_error\""))
        #expect(out.last == .close)
        #expect(m.isClosed)
        #expect(m.bufferedRequestBytes == 0)
    }

    /// EOF after complete requests: they are still answered (in order), then the connection closes.
    @Test func halfCloseAfterCompleteRequestsAnswersThemThenCloses() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        let reqs = started(m.receive(Raw.bytes("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"), now: 0))
        #expect(reqs.count == 2)
        #expect(m.peerFinishedSending(now: 0).isEmpty)
        let first = m.respond(reqs[0].0, ResponsePart.complete(.text("A")))
        #expect(Raw.text(first).hasSuffix("\r\n\r\nA"))
        #expect(!first.contains(.close))
        let second = m.respond(reqs[1].0, ResponsePart.complete(.text("B")))
        #expect(Raw.text(second).hasSuffix("\r\n\r\nB"))
        #expect(second.last == .close)
    }

    @Test func halfCloseWhenIdleCloses() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        #expect(m.peerFinishedSending(now: 0) == [.close])
        // CRLFs between requests are not a request.
        var n = ConnectionStateMachine(limits: ConnectionLimits())
        _ = n.receive(Raw.bytes("\r\n"), now: 0)
        #expect(n.peerFinishedSending(now: 0) == [.close])
    }

    /// The Nth request on a connection is answered with `Connection: close`, and the connection
    /// closes after it; requests pipelined behind it are not read.
    @Test func keepAliveLimitClosesAfterTheLastRequest() {
        var limits = ConnectionLimits()
        limits.maxRequestsPerConnection = 2
        var m = ConnectionStateMachine(limits: limits)
        let first = started(m.receive(Raw.bytes("GET /a HTTP/1.1\r\n\r\n"), now: 0))
        #expect(Raw.text(m.respond(first[0].0, ResponsePart.complete(.text("1")))).contains("Connection: keep-alive"))
        let rest = started(m.receive(Raw.bytes("GET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n"), now: 1))
        #expect(rest.map(\.1.path) == ["/b"])
        let out = m.respond(rest[0].0, ResponsePart.complete(.text("2")))
        #expect(Raw.text(out).contains("Connection: close"))
        #expect(out.last == .close)
    }

    /// `reject` (connection cap or request memory full) answers 503 with Retry-After and a JSON
    /// body after the responses already in flight, then closes.
    @Test func rejectAnswers503AfterEarlierResponses() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        let reqs = started(m.receive(Raw.bytes("GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 100\r\n\r\nxx"), now: 0))
        let out = m.reject(.overloaded("full", retryAfterSeconds: 2))
        #expect(out.first == .rejected(status: 503))
        #expect(Raw.text(out).isEmpty)  // waits for /a
        let rest = m.respond(reqs[0].0, ResponsePart.complete(.text("A")))
        let text = Raw.text(rest)
        #expect(text.contains("HTTP/1.1 503 "))
        #expect(text.contains("Retry-After: 2"))
        #expect(text.hasSuffix("\"code\":503}}"))
        #expect(rest.last == .close)
        // Nothing more is read once rejected.
        #expect(m.reject(.overloaded("again", retryAfterSeconds: 2)).isEmpty)
    }

    @Test func bufferedRequestBytesCountsOnlyThePartialRequest() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        #expect(m.bufferedRequestBytes == 0)
        _ = m.receive(Raw.bytes("POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nab"), now: 0)
        let partial = m.bufferedRequestBytes
        #expect(partial >= 2 && partial < 64)
        _ = m.receive(Raw.bytes("cd"), now: 0)
        #expect(m.bufferedRequestBytes == 0)
    }

    @Test func drainClosesWhenIdleAndAfterInFlight() {
        var idle = ConnectionStateMachine(limits: ConnectionLimits())
        #expect(idle.beginDrain() == [.close])

        var busy = ConnectionStateMachine(limits: ConnectionLimits())
        let reqs = started(busy.receive(Raw.bytes("GET /a HTTP/1.1\r\n\r\n"), now: 0))
        #expect(busy.beginDrain().isEmpty)
        let out = busy.respond(reqs[0].0, ResponsePart.complete(.text("x")))
        #expect(Raw.text(out).contains("Connection: close"))
        #expect(out.last == .close)
    }

    @Test func tooManyPipelinedPausesReading() {
        var limits = ConnectionLimits()
        limits.maxPipelined = 2
        var m = ConnectionStateMachine(limits: limits)
        let out = m.receive(Raw.bytes("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"), now: 0)
        #expect(out.last == .pauseReading)
        let reqs = started(out)
        let after = m.respond(reqs[0].0, ResponsePart.complete(.text("x")))
        #expect(after.contains(.resumeReading))
    }

    @Test func expectContinueGetsAnInterimResponse() {
        var m = ConnectionStateMachine(limits: ConnectionLimits())
        let out = m.receive(Raw.bytes("POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"), now: 0)
        #expect(Raw.text(out) == "HTTP/1.1 100 Continue\r\n\r\n")
        #expect(started(m.receive(Raw.bytes("abc"), now: 0)).count == 1)
    }
}
