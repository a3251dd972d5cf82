import Foundation
import Testing
@testable import HTTPServer
import InferenceEngine
import TensorMath
#if canImport(Glibc)
import Glibc
#endif

/// A non-blocking-read TCP client with deadlines, for clients that misbehave on purpose.
final class HostileSocket {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw APIError.server("socket failed: errno \(errno)") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard r == 0 else { Glibc.close(fd); throw APIError.server("connect failed: errno \(errno)") }
    }

    deinit { Glibc.close(fd) }

    func send(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            offset += n
        }
    }

    /// Half-close: we send nothing more but still read.
    func finishSending() { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Reads until the peer closes (or resets) or `seconds` pass; returns the bytes and whether
    /// the connection ended (EOF or reset) before the deadline.
    func readAll(within seconds: Double, until done: ([UInt8]) -> Bool = { _ in false }) -> (bytes: [UInt8], ended: Bool) {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return (data, false) }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, Int32(max(1, left * 1000)))
            if ready <= 0 { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { return (data, true) }
            data += buffer[0..<n]
            if done(data) { return (data, false) }
        }
    }
}

/// One response parsed from raw bytes: status, headers (lower-cased names) and body when framed by Content-Length.
struct RawResponse {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]?

    /// Parses consecutive responses; stops at the first that cannot be framed (chunked or truncated).
    static func parseAll(_ bytes: [UInt8]) -> (responses: [RawResponse], rest: Int) {
        var out: [RawResponse] = []
        var i = 0
        let separator: [UInt8] = [13, 10, 13, 10]
        while i < bytes.count {
            guard let headEnd = find(separator, in: bytes, from: i) else { break }
            let head = String(decoding: bytes[i..<headEnd], as: UTF8.self)
            let lines = head.components(separatedBy: "\r\n")
            let parts = lines[0].split(separator: " ")
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else { break }
            var headers: [String: String] = [:]
            for line in lines.dropFirst() {
                guard let colon = line.firstIndex(of: ":") else { continue }
                headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            i = headEnd + 4
            if status < 200 { out.append(RawResponse(status: status, headers: headers, body: nil)); continue }
            guard let length = headers["content-length"].flatMap(Int.init), i + length <= bytes.count else {
                out.append(RawResponse(status: status, headers: headers, body: nil))
                return (out, bytes.count)
            }
            out.append(RawResponse(status: status, headers: headers, body: Array(bytes[i..<i + length])))
            i += length
        }
        return (out, i)
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        var i = start
        while i + needle.count <= haystack.count {
            if haystack[i] == needle[0], Array(haystack[i..<i + needle.count]) == needle { return i }
            i += 1
        }
        return nil
    }

    /// True when the body is `{"error": {"message": string, "type": string, "code": status}}`.
    var hasJSONErrorBody: Bool {
        guard let body, let json = try? JSON.parse(String(decoding: body, as: UTF8.self)),
              let error = json["error"] else { return false }
        return error["message"]?.stringValue != nil && error["type"]?.stringValue != nil && error["code"]?.intValue == status
    }
}

/// Mutates valid requests with a seeded random stream (bit flips, insertions, deletions,
/// duplications, truncation, broken line ends, oversized and absurd lengths).
struct RequestMutator {
    var random: SplitMix64

    static let seeds: [String] = [
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "HEAD /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        Raw.post("/v1/completions", "{\"prompt\":\"abc\",\"max_tokens\":2}"),
        Raw.post("/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true}"),
        Raw.post("/completion", "{\"prompt\":[1,2,3],\"n_predict\":2}"),
        Raw.post("/tokenize", "{\"content\":\"hello\"}"),
        "POST /detokenize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"tok\r\n9\r\nens\":[97]}\r\n0\r\n\r\n",
        "GET /health HTTP/1.0\r\n\r\n",
        "POST /tokenize HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 15\r\n\r\n{\"content\":\"a\"}",
        "GET /health HTTP/1.1\r\n\r\nGET /v1/models HTTP/1.1\r\n\r\n",
    ]

    mutating func int(_ n: Int) -> Int { min(n - 1, Int(random.nextUnitDouble() * Double(n))) }

    mutating func mutate() -> [UInt8] {
        var bytes = Array(Self.seeds[int(Self.seeds.count)].utf8)
        for _ in 0...int(3) {
            guard !bytes.isEmpty else { break }
            let at = int(bytes.count)
            switch int(9) {
            case 0: bytes[at] ^= UInt8(1 << int(8))
            case 1: bytes.insert(UInt8(int(256)), at: at)
            case 2: bytes.removeSubrange(at..<min(bytes.count, at + 1 + int(8)))
            case 3: bytes.insert(contentsOf: bytes[at..<min(bytes.count, at + 1 + int(16))], at: at)
            case 4: bytes = Array(bytes.prefix(at))
            case 5: if let cr = bytes[at...].firstIndex(of: 13) { bytes.remove(at: cr) }
            case 6: bytes.insert(contentsOf: Array("X-Big: \(String(repeating: "a", count: 20000))\r\n".utf8), at: min(bytes.count, bytes.firstIndex(of: 10).map { $0 + 1 } ?? 0))
            case 7:
                let lengths = ["Content-Length: 99999999999\r\n", "Content-Length: -1\r\n", "Content-Length: 5\r\nContent-Length: 6\r\n",
                               "Transfer-Encoding: chunked\r\n", "Content-Length: 1000\r\n"]
                bytes.insert(contentsOf: Array(lengths[int(lengths.count)].utf8), at: min(bytes.count, bytes.firstIndex(of: 10).map { $0 + 1 } ?? 0))
            default: bytes[at] = [0, 0x7f, 0xff, 32, 58, 10][int(6)]
            }
        }
        return bytes
    }
}

@Suite(.serialized) struct HostileClientTests {
    func withServer(codec: ByteCodec = ByteCodec(), configure: (inout ServerConfig) -> Void = { _ in },
                    _ body: (APIServer) throws -> Void) throws {
        var config = ServerConfig()
        config.port = 0
        configure(&config)
        let server = APIServer(config: config, backend: ModelBackend(service: ScriptedService(), codec: codec))
        try server.start()
        defer {
            server.shutdown()
            server.waitUntilStopped()
        }
        try body(server)
    }

    /// Runs `work(i)` for i in 0..<count on `threads` threads.
    func parallel(_ count: Int, threads: Int, _ work: @escaping @Sendable (Int) -> Void) {
        let next = NSLock()
        nonisolated(unsafe) var index = 0
        let group = DispatchGroup()
        for _ in 0..<threads {
            group.enter()
            Thread.detachNewThread {
                while true {
                    next.lock(); let i = index; index += 1; next.unlock()
                    guard i < count else { break }
                    work(i)
                }
                group.leave()
            }
        }
        group.wait()
    }

    /// 2,000 seeded mutations of valid requests, each on its own connection: every connection
    /// that sent anything but blank lines gets at least one status line; every error response
    /// (other than to HEAD) carries the JSON error body; and every connection is closed by the
    /// server or answered within the header timeout (plus the 250 ms timer tick and slack).
    /// Most clients half-close after sending (the answer must still come); one in ten does not
    /// (then timeouts must end what is incomplete).
    @Test func mutatedRequestsGetAnAnswerOrATimelyClose() throws {
        let headerTimeout = 1.0
        try withServer(configure: { $0.limits.headerTimeout = headerTimeout; $0.limits.requestTimeout = 3 }) { server in
            var mutator = RequestMutator(random: SplitMix64(seed: 19))
            let requests = (0..<2000).map { _ in mutator.mutate() }
            let failures = NSLock()
            nonisolated(unsafe) var problems: [String] = []
            nonisolated(unsafe) var statuses: [Int: Int] = [:]
            parallel(requests.count, threads: 32) { i in
                let sent = requests[i]
                let halfClose = i % 10 != 0
                let started = Date()
                func problem(_ what: String) {
                    failures.lock(); problems.append("#\(i) \(what): \(String(decoding: sent.prefix(200), as: UTF8.self).debugDescription)"); failures.unlock()
                }
                guard let socket = try? HostileSocket(port: server.port) else { return problem("connect failed") }
                socket.send(sent)
                if halfClose { socket.finishSending() }
                // A complete request that keeps the connection alive is answered at once; the
                // connection then stays open (idle), which is correct, so stop reading there.
                let (received, ended) = socket.readAll(within: headerTimeout + 1.5) { bytes in
                    // Without a half-close, a complete keep-alive answer leaves the connection open.
                    guard !halfClose else { return false }
                    let (responses, used) = RawResponse.parseAll(bytes)
                    return used == bytes.count && responses.last.map { $0.body != nil && $0.headers["connection"] == "keep-alive" } ?? false
                }
                let elapsed = Date().timeIntervalSince(started)
                let (responses, _) = RawResponse.parseAll(received)
                let blank = sent.allSatisfy { $0 == 13 || $0 == 10 }
                failures.lock()
                for r in responses { statuses[r.status, default: 0] += 1 }
                failures.unlock()
                if responses.isEmpty, !blank {
                    problem(received.isEmpty ? (ended ? "closed with no status line" : "no answer within \(elapsed) s")
                                             : "unparseable answer \(String(decoding: received.prefix(80), as: UTF8.self).debugDescription)")
                }
                let head = String(decoding: sent.prefix(5), as: UTF8.self).hasPrefix("HEAD")
                for r in responses where r.status >= 400 && !head && !r.hasJSONErrorBody {
                    problem("\(r.status) without a JSON error body")
                }
                if !ended, !blank, responses.last.map({ $0.headers["connection"] != "keep-alive" }) ?? true {
                    problem("neither answered with keep-alive nor closed within \(elapsed) s")
                }
            }
            print("mutated requests: statuses \(statuses.sorted { $0.key < $1.key })")
            #expect(problems.isEmpty, "\(problems.count) problems, first: \(problems.prefix(5))")
            #expect(statuses.count >= 5, "the mutations should reach several kinds of answer: \(statuses)")
        }
    }

    /// Slowloris: a client that trickles its headers a byte at a time is answered 408 and closed
    /// once the header timeout passes, freeing its slot.
    @Test func slowHeadersAreCutOffAtTheHeaderTimeout() throws {
        try withServer(configure: { $0.limits.headerTimeout = 1 }) { server in
            let socket = try HostileSocket(port: server.port)
            let started = Date()
            for byte in Array("GET /health HTTP/1.1\r\nX-Slow: ".utf8) {
                socket.send([byte])
                if Date().timeIntervalSince(started) > 1.6 { break }
                Thread.sleep(forTimeInterval: 0.05)
            }
            let (received, ended) = socket.readAll(within: 2)
            let responses = RawResponse.parseAll(received).responses
            #expect(responses.first?.status == 408)
            #expect(responses.first?.hasJSONErrorBody == true)
            #expect(ended)
            #expect(Date().timeIntervalSince(started) < 3)
        }
    }

    /// With 2,000 idle connections open (more than `max_connections`), the oldest idle ones are
    /// shed and `/health` on a new connection answers within a second; /metrics counts the sheds.
    @Test func idleConnectionsNeverLockOutHealthChecks() throws {
        guard raiseOpenFileLimit() >= 4600 else { print("skipped: the open-file hard limit is below 4600"); return }
        try withServer(configure: { $0.maxConnections = 512 }) { server in
            var idle: [HostileSocket] = []
            for _ in 0..<2000 { idle.append(try HostileSocket(port: server.port)) }
            let started = Date()
            let probe = try HostileSocket(port: server.port)
            probe.send(Array("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
            let (received, _) = probe.readAll(within: 1)
            let elapsed = Date().timeIntervalSince(started)
            print("2,000 idle connections, max_connections 512: /health answered in \(Int(elapsed * 1000)) ms")
            #expect(RawResponse.parseAll(received).responses.first?.status == 200, "after \(elapsed) s: \(String(decoding: received, as: UTF8.self))")
            #expect(elapsed < 1)
            let metrics = try curl(["http://127.0.0.1:\(server.port)/metrics"])
            let shed = metrics.split(separator: "\n").first { $0.hasPrefix("moe_http_shed_connections_total ") }
            #expect((shed.flatMap { Double($0.split(separator: " ")[1]) } ?? 0) >= 1400, "\(shed ?? "no shed counter")")
            withExtendedLifetime(idle) {}
        }
    }

    /// 2,000 idle connections under a cap that holds them all: still answered within a second.
    @Test func twoThousandIdleConnectionsUnderTheCap() throws {
        guard raiseOpenFileLimit() >= 4600 else { print("skipped: the open-file hard limit is below 4600"); return }
        try withServer(configure: { $0.maxConnections = 4096 }) { server in
            var idle: [HostileSocket] = []
            for _ in 0..<2000 { idle.append(try HostileSocket(port: server.port)) }
            #expect(waitFor(5) { server.metrics.exposition().contains("moe_http_open_connections 2000") })
            let started = Date()
            let probe = try HostileSocket(port: server.port)
            probe.send(Array("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
            let (received, _) = probe.readAll(within: 1)
            print("2,000 idle connections, max_connections 4096: /health answered in \(Int(Date().timeIntervalSince(started) * 1000)) ms")
            #expect(RawResponse.parseAll(received).responses.first?.status == 200)
            #expect(Date().timeIntervalSince(started) < 1)
            withExtendedLifetime(idle) {}
        }
    }

    /// At the cap with no idle connection to shed (each is mid-request), a new connection is
    /// answered 503 with Retry-After and a JSON body, then closed — never reset silently.
    @Test func atTheCapWithNothingIdleTheAnswerIs503() throws {
        try withServer(configure: { $0.maxConnections = 2; $0.retryAfterSeconds = 3 }) { server in
            let busy = try (0..<2).map { _ in try HostileSocket(port: server.port) }
            for socket in busy { socket.send(Array("POST /tokenize HTTP/1.1\r\nContent-Length: 50\r\n\r\n{".utf8)) }
            #expect(waitFor(2) { server.heldRequestBytesNow > 0 })
            let extra = try HostileSocket(port: server.port)
            let (received, ended) = extra.readAll(within: 2)
            let response = RawResponse.parseAll(received).responses.first
            #expect(response?.status == 503)
            #expect(response?.headers["retry-after"] == "3")
            #expect(response?.hasJSONErrorBody == true)
            #expect(ended)
            withExtendedLifetime(busy) {}
        }
    }

    /// The body limit follows the budget and the context: a body a context of the longest
    /// tokens could never need is refused (413, JSON) from its Content-Length, before it is read.
    @Test func bodyLimitFollowsTheBudgetAndTheContext() throws {
        try withServer(codec: ByteCodec(contextLength: 1024), configure: { $0.memoryBudget = 96 << 20 }) { server in
            // ByteCodec: one byte per token (3 as text for bytes that are not UTF-8 alone, U+FFFD), 1024 tokens.
            let perToken = ModelBackend(service: ScriptedService(), codec: ByteCodec()).maxBytesPerToken
            #expect(perToken == 3)
            let expected = RequestMemory.contextBodyLimit(contextLength: 1024, maxBytesPerToken: perToken)
            #expect(server.bodyLimit == expected)
            let socket = try HostileSocket(port: server.port)
            socket.send(Array("POST /v1/completions HTTP/1.1\r\nContent-Length: 3000000\r\n\r\n{\"prompt\":\"".utf8))
            let (received, ended) = socket.readAll(within: 2)
            let response = RawResponse.parseAll(received).responses.first
            #expect(response?.status == 413)
            #expect(response?.hasJSONErrorBody == true)
            #expect(ended)
        }
        // Without a model, the budget alone bounds it: 1/512 of 96 MiB.
        var config = ServerConfig()
        config.memoryBudget = 96 << 20
        #expect(RequestMemory(config: config).bodyLimit == (96 << 20) / 512)
        #expect(APIServer.memoryReservation(for: config) < 24 << 20)
    }

    /// Request memory in flight is released: after a burst of requests the held-bytes gauge is 0.
    @Test func heldRequestBytesReturnToZero() throws {
        try withServer { server in
            parallel(64, threads: 16) { i in
                guard let socket = try? HostileSocket(port: server.port) else { return }
                if i % 2 == 0 {
                    socket.send(Array(Raw.post("/tokenize", "{\"content\":\"\(String(repeating: "a", count: 40))\"}", extra: "Connection: close\r\n").utf8))
                } else {
                    socket.send(Array("POST /tokenize HTTP/1.1\r\nContent-Length: 5000\r\n\r\n{\"content\":".utf8))
                    socket.finishSending()
                }
                _ = socket.readAll(within: 3)
            }
            #expect(waitFor(3) { server.heldRequestBytesNow == 0 })
        }
    }
}

/// Raises this process's open-file soft limit to the hard limit (client and server sockets of
/// the idle-connection tests live in the same process).
@discardableResult func raiseOpenFileLimit() -> Int {
    APIServer.raiseOpenFileLimit()
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    return Int(limit.rlim_cur)
}
