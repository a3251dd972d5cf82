import Foundation
import Testing

/// Starts the real `moe-serve` binary on the bundled demo model (real engine, real expert store
/// read through the cache) and talks to it over loopback, as a user would.
final class RunningServer: @unchecked Sendable {
    let process = Process()
    let port: Int

    /// The `moe-serve` built beside this test bundle (`scripts/test.sh` builds it first).
    static var binary: URL {
        URL(fileURLWithPath: ProcessInfo.processInfo.arguments[0]).deletingLastPathComponent().appendingPathComponent("moe-serve")
    }

    /// `environment` is added to this process's (e.g. `MOE_FAULTS`).
    init(arguments: [String] = [], environment: [String: String] = [:]) throws {
        process.executableURL = Self.binary
        process.arguments = ["serve", "--port", "0"] + arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // Read stderr until the model is loaded: "listening on http://127.0.0.1:PORT", then "ready".
        var text = ""
        var found: Int?
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let data = stderr.fileHandleForReading.availableData
            if data.isEmpty { break }
            text += String(decoding: data, as: UTF8.self)
            if found == nil, let range = text.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                found = Int(text[range].split(separator: ":").last!)
            }
            if text.contains("ready") || text.contains("error") { break }
        }
        guard let found, text.contains("ready") else {
            process.terminate()
            throw ServerStartError(output: text)
        }
        port = found
    }

    func stop() -> Int32 {
        process.interrupt() // SIGINT: graceful shutdown, exit 0
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// `curl -s` with `arguments`; returns stdout.
    func curl(_ path: String, _ arguments: [String] = []) throws -> String {
        try curlLoopback(port: port, path, arguments)
    }
}

/// `curl -s` with `arguments` against `path` on a server at loopback `port`, for at most
/// `maxTime` seconds; returns stdout.
func curlLoopback(port: Int, _ path: String, _ arguments: [String] = [], maxTime: Int = 60) throws -> String {
    let curl = Process()
    curl.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
    curl.arguments = ["-s", "--max-time", "\(maxTime)"] + arguments + ["http://127.0.0.1:\(port)\(path)"]
    let out = Pipe()
    curl.standardOutput = out
    try curl.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    curl.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}

/// Texts collected from concurrent requests.
final class Results: @unchecked Sendable {
    private let lock = NSLock()
    private var texts: [String] = []
    func add(_ text: String) { lock.lock(); texts.append(text); lock.unlock() }
    var values: [String] { lock.lock(); defer { lock.unlock() }; return texts }
}

struct ServerStartError: Error, CustomStringConvertible {
    let output: String
    var description: String { "moe-serve did not become ready: \(output)" }
}

@Suite(.serialized) struct ServeEndToEndTests {
    @Test func fourConcurrentGreedyRequestsReturnWhatOneAloneReturns() throws {
        let server = try RunningServer(arguments: ["--memory-budget", "80MiB"])
        let body = #"{"prompt": "def fibonacci(n):", "max_tokens": 24, "temperature": 0}"#
        let alone = try server.curl("/v1/completions", ["-d", body])
        let aloneText = try Self.text(alone)
        #expect(!aloneText.isEmpty)
        let together = Results()
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            together.add((try? server.curl("/v1/completions", ["-d", body])).flatMap { try? Self.text($0) } ?? "<failed>")
        }
        #expect(together.values == Array(repeating: aloneText, count: 4))
        let metrics = try server.curl("/metrics")
        #expect(metrics.contains("moe_expert_cache_hits_total"))
        #expect(metrics.contains(#"moe_http_requests_total{route="/v1/completions",status="200"} 5"#))
        #expect(server.stop() == 0)
    }

    /// The shadow of the next layer runs by default in the server: with the demo's experts mostly
    /// on disk, greedy completions count shadow runs in `/metrics`; with `--shadow-routing off`
    /// none, and the text is the same. Prefetch auto, the server's default, reports its leader.
    @Test func theServerRunsTheShadowByDefaultAndCountsIt() throws {
        func serve(_ extra: [String]) throws -> (text: String, runs: Double) {
            let server = try RunningServer(arguments: ["--expert-cache", "4MiB"] + extra)
            let body = #"{"prompt": "def fibonacci(n):", "max_tokens": 24, "temperature": 0}"#
            let text = try Self.text(try server.curl("/v1/completions", ["-d", body]))
            // The prediction figures reach /metrics on the server's periodic sample.
            let metrics = try WeakExpertSkippingEndToEndTests.metricsShowingMisses(server)
            #expect(server.stop() == 0)
            // The default policy duels its two recency bonuses: the one leading is 1.
            let leaders = ["fixed_recency", "measured_recency"].compactMap {
                WeakExpertSkippingEndToEndTests.value("moe_expert_cache_policy_leader{policy=\"\($0)\"}", in: metrics)
            }
            #expect(leaders.filter { $0 == 1 }.count == 1, "\(metrics)")
            // Prefetch is auto by default in the server: a 24-token reply is inside the first
            // round, whose first block prefetches, and prefetch leads until a round ends.
            #expect(WeakExpertSkippingEndToEndTests.value("moe_prefetch_auto_leader{arm=\"on\"}", in: metrics) == 1, "\(metrics)")
            #expect((WeakExpertSkippingEndToEndTests.value("moe_prefetch_auto_decode_steps_total{arm=\"on\"}", in: metrics) ?? 0) > 0, "\(metrics)")
            return (text, try #require(WeakExpertSkippingEndToEndTests.value("moe_prefetch_shadow_runs_total", in: metrics), "\(metrics)"))
        }
        let on = try serve([]), off = try serve(["--shadow-routing", "off"])
        #expect(on.runs > 0)
        #expect(off.runs == 0)
        #expect(!on.text.isEmpty && on.text == off.text)
    }

    /// `--memory-budget auto` on the real binary: it starts from the machine's free memory,
    /// answers, and `/metrics` carries the budget it runs under.
    @Test func memoryBudgetAutoServesAndReportsItsBudget() throws {
        let server = try RunningServer(arguments: ["--memory-budget", "auto"])
        let body = #"{"prompt": "def fibonacci(n):", "max_tokens": 8, "temperature": 0}"#
        #expect(!(try Self.text(try server.curl("/v1/completions", ["-d", body]))).isEmpty)
        let health = try server.curl("/health/detail")
        let metrics = try server.curl("/metrics")
        let budget = metrics.split(separator: "\n").first { $0.hasPrefix("moe_memory_budget_bytes ") }
            .flatMap { Double($0.split(separator: " ").last!) }
        #expect((budget ?? 0) > 0, "\(metrics)")
        #expect(metrics.contains("moe_expert_cache_bytes_budget"), "\(metrics)")
        #expect(health.replacingOccurrences(of: " ", with: "").contains(#""memory_budget_auto":true"#), "\(health)")
        #expect(server.stop() == 0)
    }

    @Test func theOpenAIClientWorksUnchanged() throws {
        guard let python = ProcessInfo.processInfo.environment["MOE_PYTHON"] else { return } // set by scripts/test.sh
        let server = try RunningServer()
        let script = Process()
        script.executableURL = URL(fileURLWithPath: python)
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        script.arguments = [root.appendingPathComponent("scripts/test_openai_client.py").path, "http://127.0.0.1:\(server.port)"]
        let out = Pipe()
        script.standardOutput = out
        script.standardError = out
        try script.run()
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        script.waitUntilExit()
        #expect(script.terminationStatus == 0, "\(output)")
        #expect(output.contains(" 0 failed"))
        #expect(server.stop() == 0)
    }

    static func text(_ response: String) throws -> String {
        struct Completion: Decodable { struct Choice: Decodable { let text: String }; let choices: [Choice] }
        return try JSONDecoder().decode(Completion.self, from: Data(response.utf8)).choices[0].text
    }
}
