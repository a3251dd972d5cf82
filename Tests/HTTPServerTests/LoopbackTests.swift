import Foundation
import Testing
@testable import HTTPServer
import InferenceEngine
#if canImport(Glibc)
import Glibc
#endif

/// A blocking TCP client for tests: connect, send, read with a timeout.
final class RawClient {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard r == 0 else { throw APIError.server("connect failed") }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { Glibc.close(fd) }

    func send(_ text: String) { _ = Array(text.utf8).withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }

    /// Reads until `done` says the text is complete, the peer closes, or the timeout.
    func read(until done: (String) -> Bool = { _ in false }) -> String {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            // A recv on a socket with SO_RCVTIMEO is never restarted after a signal (signal(7)):
            // other tests in this process start subprocesses, and their SIGCHLD lands here.
            if n < 0, errno == EINTR { continue }
            if n <= 0 { break }
            data += buffer[0..<n]
            if done(String(decoding: data, as: UTF8.self)) { break }
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// True when the server closed the connection (recv returns 0).
    func isClosedByPeer() -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, 0) == 0
    }
}

/// Runs `curl` and returns its stdout.
func curl(_ args: [String]) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
    p.arguments = ["-sS", "--max-time", "10"] + args
    let out = Pipe()
    p.standardOutput = out
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}

func waitFor(_ seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
        if condition() { return true }
        Thread.sleep(forTimeInterval: 0.01)
    }
    return condition()
}

@Suite(.serialized) struct LoopbackTests {
    func withServer(_ service: ScriptedService = ScriptedService(), configure: (inout ServerConfig) -> Void = { _ in },
                    _ body: (APIServer, ScriptedService) throws -> Void) throws {
        var config = ServerConfig()
        config.port = 0
        configure(&config)
        let server = APIServer(config: config, backend: ModelBackend(service: service, codec: ByteCodec()))
        try server.start()
        defer {
            server.shutdown()
            server.waitUntilStopped()
        }
        try body(server, service)
    }

    @Test func healthAndPipeliningOverASocket() throws {
        try withServer { server, _ in
            let client = try RawClient(port: server.port)
            client.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\nPOST /tokenize HTTP/1.1\r\nContent-Length: 15\r\n\r\n{\"content\":\"a\"}")
            let text = client.read { $0.components(separatedBy: "HTTP/1.1 ").count == 4 && $0.hasSuffix("}") }
            let statuses = text.components(separatedBy: "HTTP/1.1 ").dropFirst().map { String($0.prefix(3)) }
            #expect(statuses == ["200", "404", "200"])
            #expect(text.hasSuffix("{\"tokens\":[97]}"))
        }
    }

    @Test func streamingChatWithCurl() throws {
        try withServer { server, _ in
            let out = try curl(["-N", "http://127.0.0.1:\(server.port)/v1/chat/completions", "-H", "Content-Type: application/json",
                                "-d", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,\"stream_options\":{\"include_usage\":true}}"])
            let events = out.components(separatedBy: "\n\n").filter { !$0.isEmpty }
            #expect(events.last == "data: [DONE]")
            #expect(events.count == 4 + 1 + 1 + 1 + 1)  // role, 4 tokens, finish, usage, DONE
            let text = try events.dropLast().compactMap { try JSON.parse(String($0.dropFirst(6)))["choices"]?[0]?["delta"]?["content"]?.stringValue }.joined()
            #expect(text == "Hello, world!")
        }
    }

    @Test func nonStreamingCompletionWithCurl() throws {
        try withServer { server, service in
            let out = try curl(["http://127.0.0.1:\(server.port)/v1/completions", "-d", "{\"prompt\":\"abc\",\"max_tokens\":2}"])
            let json = try JSON.parse(out)
            #expect(json["choices"]?[0]?["text"] == .string("Hello,"))
            #expect(json["choices"]?[0]?["finish_reason"] == .string("length"))
            #expect(json["usage"]?["prompt_tokens"] == .int(3))
            #expect(service.submittedCount == 1)
        }
    }

    @Test func nChoicesAreOneSequenceEachAndCancelledTogether() throws {
        try withServer { server, service in
            let out = try curl(["http://127.0.0.1:\(server.port)/v1/completions", "-d", "{\"prompt\":\"abc\",\"max_tokens\":2,\"n\":3,\"seed\":7}"])
            let json = try JSON.parse(out)
            #expect(json["choices"]?.arrayValue?.count == 3)
            #expect(json["choices"]?[2]?["text"] == .string("Hello,"))
            #expect(json["usage"]?["completion_tokens"] == .int(6) && json["usage"]?["prompt_tokens"] == .int(3))
            #expect(service.submittedCount == 3)
            #expect(service.submitted.map { $0.sampling.seed } == [7, 8, 9])
        }
        let slow = ScriptedService(script: Array(repeating: "x", count: 200), tokenDelay: 0.01)
        try withServer(slow) { server, service in
            let client = try RawClient(port: server.port)
            client.send(Raw.post("/v1/completions", "{\"prompt\":\"a\",\"stream\":true,\"max_tokens\":100,\"n\":2}"))
            _ = client.read { $0.contains("\"index\":1") }
            Glibc.shutdown(client.fd, Int32(SHUT_RDWR))
            #expect(waitFor { service.cancelledCount == 2 })
            #expect(waitFor { service.liveCount == 0 })
        }
    }

    @Test func disconnectMidStreamCancels() throws {
        let service = ScriptedService(script: Array(repeating: "x", count: 200), tokenDelay: 0.01)
        try withServer(service) { server, service in
            let client = try RawClient(port: server.port)
            let body = "{\"prompt\":\"a\",\"stream\":true,\"n_predict\":50}"
            client.send(Raw.post("/completion", body))
            _ = client.read { $0.contains("\"content\":\"x\"") }
            Glibc.shutdown(client.fd, Int32(SHUT_RDWR))
            #expect(waitFor { service.cancelledCount == 1 })
            #expect(waitFor { service.liveCount == 0 })
        }
    }

    @Test func queueFullIs503WithRetryAfter() throws {
        let service = ScriptedService(script: Array(repeating: "x", count: 50), tokenDelay: 0.02)
        try withServer(service, configure: { $0.maxQueuedRequests = 1; $0.retryAfterSeconds = 7 }) { server, service in
            let first = try RawClient(port: server.port)
            first.send(Raw.post("/completion", "{\"prompt\":\"a\",\"stream\":true}"))
            _ = first.read { $0.contains("data: ") }
            let second = try RawClient(port: server.port)
            second.send(Raw.post("/completion", "{\"prompt\":\"a\"}"))
            let text = second.read { $0.contains("}}") }
            #expect(text.hasPrefix("HTTP/1.1 503 "))
            #expect(text.contains("Retry-After: 7\r\n"))
            #expect(text.contains("\"code\":503"))
        }
    }

    @Test func engineRefusalMapsToStatus() throws {
        let service = ScriptedService()
        service.refuse = SubmissionError(.queueFull, "engine queue is full")
        try withServer(service) { server, _ in
            let out = try curl(["-i", "http://127.0.0.1:\(server.port)/v1/completions", "-d", "{\"prompt\":\"a\"}"])
            #expect(out.hasPrefix("HTTP/1.1 503"))
            #expect(out.contains("Retry-After"))
        }
    }

    @Test func midStreamFailureSendsErrorEventAndCloses() throws {
        let service = ScriptedService(failAfter: 2)
        try withServer(service) { server, _ in
            let client = try RawClient(port: server.port)
            client.send(Raw.post("/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":true}"))
            let text = client.read()  // until the server closes
            #expect(text.contains("data: {\"error\":{\"message\":\"expert 3 of layer 1 could not be read\""))
            #expect(text.hasSuffix("0\r\n\r\n"))
        }
    }

    @Test func bodyAndHeaderLimitsOverASocket() throws {
        try withServer(configure: { $0.limits.maxBodyBytes = 100; $0.limits.maxHeaderBytes = 200 }) { server, _ in
            let a = try RawClient(port: server.port)
            a.send(Raw.post("/completion", String(repeating: "x", count: 101)))
            let big = a.read()
            #expect(big.hasPrefix("HTTP/1.1 413 "))
            let b = try RawClient(port: server.port)
            b.send("GET /health HTTP/1.1\r\nX-Long: \(String(repeating: "y", count: 300))\r\n\r\n")
            #expect(b.read().hasPrefix("HTTP/1.1 431 "))
            // Errors the connection answers itself are counted too.
            let metrics = try curl(["http://127.0.0.1:\(server.port)/metrics"])
            #expect(metrics.contains("moe_http_requests_total{route=\"connection\",status=\"413\"} 1")
                    || metrics.contains("moe_http_requests_total{status=\"413\",route=\"connection\"} 1"), "\(metrics)")
        }
    }

    @Test func apiKeyOverCurl() throws {
        try withServer(configure: { $0.apiKeys = ["k"] }) { server, _ in
            let base = "http://127.0.0.1:\(server.port)"
            let missing = try curl(["-o", "/dev/null", "-w", "%{http_code}", "\(base)/v1/models"])
            let good = try curl(["-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer k", "\(base)/v1/models"])
            let health = try curl(["-o", "/dev/null", "-w", "%{http_code}", "\(base)/health"])
            #expect(missing == "401")
            #expect(good == "200")
            #expect(health == "200")
        }
    }

    @Test func metricsExposition() throws {
        try withServer { server, _ in
            let base = "http://127.0.0.1:\(server.port)"
            _ = try curl(["\(base)/health"])
            _ = try curl(["\(base)/v1/completions", "-d", "{\"prompt\":\"abc\"}"])
            var snapshot = ExpertCacheSnapshot()
            snapshot.hitsPerLayer = [3, 4]
            snapshot.missesPerLayer = [1, 0]
            snapshot.diskReadBytes = 4096
            snapshot.cacheBytesBudget = 1 << 30
            snapshot.memoryBudgetBytes = 4 << 30
            snapshot.shadowRuns = 7
            snapshot.shadowAddedGuesses = 2
            snapshot.registeredReadBuffers = 12
            snapshot.fixedReads = 40
            snapshot.plainReads = 3
            snapshot.splitStarts = 6
            snapshot.policyLeader = "fixed_recency"
            snapshot.prefetchAuto = PrefetchAutoSnapshot(leader: "on", rounds: 0, lastMedianRatio: nil, stepsOn: 20, stepsOff: 12)
            server.metrics.updateExpertCache(snapshot)
            snapshot.hitsPerLayer = [5, 4]
            snapshot.shadowRuns = 10
            snapshot.fixedReads = 55
            snapshot.splitStarts = 9
            snapshot.registrationRefused = true
            snapshot.policyLeader = "measured_recency"
            snapshot.prefetchAuto = PrefetchAutoSnapshot(leader: "off", rounds: 1, lastMedianRatio: 1.15, stepsOn: 32, stepsOff: 40)
            server.metrics.updateExpertCache(snapshot)
            // The request counter is bumped when the response ends, just before the client sees it.
            #expect(waitFor { (try? curl(["\(base)/metrics"]))?.contains("route=\"/v1/completions\"") == true })
            let text = try curl(["\(base)/metrics"])
            var samples: [String: Double] = [:]
            for line in text.split(separator: "\n") where !line.hasPrefix("#") {
                let parts = line.split(separator: " ")
                if parts.count == 2, let v = Double(parts[1]) { samples[String(parts[0])] = v }
            }
            #expect(samples["moe_http_requests_total{route=\"/health\",status=\"200\"}"] == 1)
            #expect(samples["moe_http_requests_total{route=\"/v1/completions\",status=\"200\"}"] == 1)
            #expect(samples["moe_prompt_tokens_total"] == 3)
            #expect(samples["moe_generated_tokens_total"] == 4)
            #expect(samples["moe_expert_cache_hits_total"] == 9)
            #expect(samples["moe_expert_cache_layer_hits_total{layer=\"0\"}"] == 5)
            #expect(samples["moe_disk_read_bytes_total"] == 4096)
            #expect(samples["moe_expert_cache_bytes_budget"] == Double(1 << 30))
            #expect(samples["moe_memory_budget_bytes"] == Double(4 << 30))
            #expect(samples["moe_prefetch_shadow_runs_total"] == 10)
            #expect(samples["moe_prefetch_shadow_added_total"] == 2)
            #expect(samples["moe_io_registered_buffers"] == 12)
            #expect(samples["moe_io_fixed_reads_total"] == 55)
            #expect(samples["moe_io_plain_reads_total"] == 3)
            #expect(samples["moe_io_registration_refused"] == 1)
            #expect(samples["moe_expert_split_starts_total"] == 9)
            // The policy leading now is 1, the one that led before 0.
            #expect(samples["moe_expert_cache_policy_leader{policy=\"measured_recency\"}"] == 1)
            #expect(samples["moe_expert_cache_policy_leader{policy=\"fixed_recency\"}"] == 0)
            // Prefetch auto: off leads after one round that found prefetching 15% slower.
            #expect(samples["moe_prefetch_auto_leader{arm=\"off\"}"] == 1)
            #expect(samples["moe_prefetch_auto_leader{arm=\"on\"}"] == 0)
            #expect(samples["moe_prefetch_auto_rounds_total"] == 1)
            #expect(samples["moe_prefetch_auto_decode_steps_total{arm=\"on\"}"] == 32)
            #expect(samples["moe_prefetch_auto_decode_steps_total{arm=\"off\"}"] == 40)
            #expect(samples["moe_prefetch_auto_last_ratio"] == 1.15)
            #expect((samples["moe_resident_memory_bytes"] ?? 0) > 0)
        }
    }

    @Test func gracefulShutdownLetsAStreamFinish() throws {
        var config = ServerConfig()
        config.port = 0
        let service = ScriptedService(script: Array(repeating: "y", count: 20), tokenDelay: 0.01)
        let server = APIServer(config: config, backend: ModelBackend(service: service, codec: ByteCodec()))
        try server.start()
        let client = try RawClient(port: server.port)
        client.send(Raw.post("/completion", "{\"prompt\":\"a\",\"stream\":true}"))
        _ = client.read { $0.contains("data: ") }
        server.shutdown()
        let rest = client.read()
        #expect(rest.contains("\"stop\":true"))
        server.waitUntilStopped()
        #expect(service.cancelledCount == 0)
        // The listener is gone.
        #expect(throws: (any Error).self) { _ = try RawClient(port: server.port) }
    }

    @Test func shutdownAfterGracePeriodCancels() throws {
        var config = ServerConfig()
        config.port = 0
        config.shutdownGracePeriod = 0.2
        let service = ScriptedService(script: Array(repeating: "y", count: 1000), tokenDelay: 0.01)
        let server = APIServer(config: config, backend: ModelBackend(service: service, codec: ByteCodec()))
        try server.start()
        let client = try RawClient(port: server.port)
        client.send(Raw.post("/completion", "{\"prompt\":\"a\",\"stream\":true}"))
        _ = client.read { $0.contains("data: ") }
        server.shutdown()
        server.waitUntilStopped()
        #expect(waitFor { service.cancelledCount == 1 })
    }
}

/// Runs scripts/test_openai_client.py (the real `openai` client and prometheus_client) against
/// the server with the scripted engine, when MOE_PYTHON names a Python that has both packages.
@Suite struct OpenAIClientScriptTests {
    @Test(.enabled(if: ProcessInfo.processInfo.environment["MOE_PYTHON"] != nil))
    func openAIClientScript() throws {
        var config = ServerConfig()
        config.port = 0
        let service = ScriptedService(script: ["One", " two", " three", " four", " five"])
        let server = APIServer(config: config, backend: ModelBackend(service: service, codec: ByteCodec(contextLength: 256)))
        try server.start()
        defer { server.shutdown(); server.waitUntilStopped() }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: ProcessInfo.processInfo.environment["MOE_PYTHON"]!)
        // A scripted service: the checks that need a model (constraints, tools, routes) run in ServeEndToEndTests.
        p.arguments = [root.appendingPathComponent("scripts/test_openai_client.py").path, "http://127.0.0.1:\(server.port)", "--scripted"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        // Kept for reading after a run; not printed, so its summary line is not taken for the suite's.
        try? text.write(toFile: NSTemporaryDirectory() + "moe-openai-client.log", atomically: true, encoding: .utf8)
        #expect(p.terminationStatus == 0, "\(text)")
    }
}

/// Renders the dashboard in headless Chromium (Debian's `chromium`) and saves a screenshot to
/// the path in MOE_DASHBOARD_SCREENSHOT (docs/dashboard.png was made this way).
@Suite struct DashboardScreenshotTests {
    @Test(.enabled(if: ProcessInfo.processInfo.environment["MOE_DASHBOARD_SCREENSHOT"] != nil))
    func screenshot() throws {
        var config = ServerConfig()
        config.port = 0
        let server = APIServer(config: config, backend: ModelBackend(service: ScriptedService(), codec: ByteCodec(), stats: FakeStats()))
        try server.start()
        defer { server.shutdown(); server.waitUntilStopped() }
        let path = ProcessInfo.processInfo.environment["MOE_DASHBOARD_SCREENSHOT"]!
        try? FileManager.default.removeItem(atPath: path)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/chromium")
        p.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,860",
                       "--virtual-time-budget=4000", "--screenshot=\(path)", "http://127.0.0.1:\(server.port)/"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        #expect(FileManager.default.fileExists(atPath: path))
    }
}

@Suite struct ConcurrencyTests {
    /// 16 connections, each with 5 keep-alive requests mixing streams and JSON: every response
    /// complete and identical to the single-request answer, nothing left running.
    @Test func sixteenConnections() throws {
        var config = ServerConfig()
        config.port = 0
        let service = ScriptedService(tokenDelay: 0.001)
        let server = APIServer(config: config, backend: ModelBackend(service: service, codec: ByteCodec()))
        try server.start()
        defer { server.shutdown(); server.waitUntilStopped() }
        let failures = NSLock()
        nonisolated(unsafe) var bad: [String] = []
        DispatchQueue.concurrentPerform(iterations: 16) { i in
            do {
                let client = try RawClient(port: server.port)
                for j in 0..<5 {
                    let stream = (i + j) % 2 == 0
                    client.send(Raw.post("/v1/completions", "{\"prompt\":\"q\",\"stream\":\(stream)}"))
                    let text = client.read { stream ? $0.hasSuffix("data: [DONE]\n\n\r\n0\r\n\r\n") : $0.hasSuffix("}}") }
                    let ok = stream ? text.contains("\"text\":\"Hello\"") && text.contains("\"text\":\"!\"")
                                    : text.contains("\"text\":\"Hello, world!\"")
                    if !ok { failures.lock(); bad.append(text); failures.unlock() }
                }
            } catch {
                failures.lock(); bad.append("\(error)"); failures.unlock()
            }
        }
        #expect(bad.isEmpty, "\(bad.prefix(2))")
        #expect(waitFor { service.liveCount == 0 })
        #expect(service.submittedCount == 80)
    }
}

/// A short load from `wrk` (16 connections) against the scripted engine, when MOE_LOAD_SECONDS is
/// set: no socket errors and no 5xx other than 503 (the admission limit is set low on purpose).
@Suite struct LoadTests {
    @Test(.enabled(if: ProcessInfo.processInfo.environment["MOE_LOAD_SECONDS"] != nil))
    func wrkLoad() throws {
        let seconds = ProcessInfo.processInfo.environment["MOE_LOAD_SECONDS"]!
        var config = ServerConfig()
        config.port = 0
        config.maxQueuedRequests = 8
        let service = ScriptedService(tokenDelay: 0.001)
        let server = APIServer(config: config, backend: ModelBackend(service: service, codec: ByteCodec()))
        try server.start()
        defer { server.shutdown(); server.waitUntilStopped() }
        let script = NSTemporaryDirectory() + "moe-wrk.lua"
        try """
        wrk.method = "POST"
        wrk.body = '{"messages":[{"role":"user","content":"hi"}],"stream":true}'
        wrk.headers["Content-Type"] = "application/json"
        statuses = {}
        response = function(status, headers, body)
          if status >= 500 and status ~= 503 then io.write("BAD STATUS " .. status .. "\\n") end
        end
        """.write(toFile: script, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/wrk")
        p.arguments = ["-t2", "-c16", "-d\(seconds)s", "-s", script, "http://127.0.0.1:\(server.port)/v1/chat/completions"]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        try? text.write(toFile: NSTemporaryDirectory() + "moe-wrk.log", atomically: true, encoding: .utf8)
        #expect(!text.contains("BAD STATUS"), "\(text)")
        #expect(!text.contains("Socket errors"), "\(text)")
        #expect(waitFor { service.liveCount == 0 })
    }
}
