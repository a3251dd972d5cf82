import Foundation
@testable import HTTPServer
import InferenceEngine

/// A codec where every UTF-8 byte is one token (ids 0-255); 256 is end-of-sequence.
struct ByteCodec: PromptCodec {
    var contextLength = 64
    var vocabularySize: Int { 257 }
    var modelName: String { "test-model" }
    var stopTokenIds: Set<Int> { [256] }
    func encode(_ text: String, addSpecialTokens: Bool) -> [Int] { Array(text.utf8).map { Int($0) } }
    func decode(_ ids: [Int]) -> String { String(decoding: ids.filter { $0 < 256 }.map { UInt8($0) }, as: UTF8.self) }
    func renderChat(_ messages: [ChatTurn]) throws -> String {
        messages.map { "<\($0.role)>\($0.content)" }.joined() + "<assistant>"
    }
}

/// An engine double: answers every request with the scripted tokens, on its own thread, one
/// token per `tokenDelay`. Records submissions and cancellations.
final class ScriptedService: GenerationService, @unchecked Sendable {
    let lock = NSLock()
    var script: [String]
    var tokenDelay: Double
    var failAfter: Int?
    var refuse: SubmissionError?
    private var nextID: UInt64 = 1
    private(set) var submitted: [GenerationRequest] = []
    private(set) var cancelled: Set<UInt64> = []
    private var live: Set<UInt64> = []

    init(script: [String] = ["Hello", ",", " world", "!"], tokenDelay: Double = 0, failAfter: Int? = nil) {
        self.script = script
        self.tokenDelay = tokenDelay
        self.failAfter = failAfter
    }

    func submit(_ request: GenerationRequest, onEvent: @escaping @Sendable (GenerationEvent) -> Void) throws -> UInt64 {
        lock.lock()
        if let refuse { lock.unlock(); throw refuse }
        let id = nextID
        nextID += 1
        submitted.append(request)
        live.insert(id)
        let script = Array(self.script.prefix(request.maxTokens))
        let delay = tokenDelay
        let failAfter = self.failAfter
        lock.unlock()
        Thread.detachNewThread { [self] in
            var n = 0
            for (i, piece) in script.enumerated() {
                if delay > 0 { Thread.sleep(forTimeInterval: delay) }
                if isCancelled(id) {
                    onEvent(.finished(reason: .cancelled, text: "", usage: Usage(promptTokens: request.prompt.count, completionTokens: n),
                                      timings: Timings(promptN: request.prompt.count, promptMs: 1, predictedN: n, predictedMs: 1)))
                    finish(id)
                    return
                }
                if let failAfter, i == failAfter {
                    onEvent(.failed(message: "expert 3 of layer 1 could not be read"))
                    finish(id)
                    return
                }
                onEvent(.token(id: 100 + i, text: piece, logprob: nil, topLogprobs: []))
                n += 1
            }
            let reason: FinishReason = script.count < self.script.count ? .length : .stop
            onEvent(.finished(reason: reason, text: "", usage: Usage(promptTokens: request.prompt.count, completionTokens: n),
                              timings: Timings(promptN: request.prompt.count, promptMs: 2, predictedN: n, predictedMs: 4)))
            finish(id)
        }
        return id
    }

    func cancel(_ id: UInt64) {
        lock.lock(); cancelled.insert(id); lock.unlock()
    }

    func isCancelled(_ id: UInt64) -> Bool { lock.lock(); defer { lock.unlock() }; return cancelled.contains(id) }
    func finish(_ id: UInt64) { lock.lock(); live.remove(id); lock.unlock() }
    var liveCount: Int { lock.lock(); defer { lock.unlock() }; return live.count }
    var cancelledCount: Int { lock.lock(); defer { lock.unlock() }; return cancelled.count }
    var submittedCount: Int { lock.lock(); defer { lock.unlock() }; return submitted.count }
}

/// Helpers for raw HTTP in tests.
enum Raw {
    static func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
    static func text(_ actions: [ConnectionAction]) -> String {
        var out: [UInt8] = []
        for case let .write(b) in actions { out += b }
        return String(decoding: out, as: UTF8.self)
    }
    static func post(_ path: String, _ body: String, extra: String = "") -> String {
        "POST \(path) HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\(extra)Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
    }
}

/// Statistics with a recognisable pattern, for `/v1/stats` and the dashboard screenshot.
struct FakeStats: StatsProvider {
    func currentStats() -> EngineStats {
        var s = EngineStats()
        s.decodeTokensPerSecond = 12.5
        s.promptTokensPerSecond = 180
        s.cacheHitRate = 0.83
        s.runningSequences = 3
        s.queuedRequests = 1
        s.cacheBytesUsed = 3 << 30
        s.cacheBytesBudget = 4 << 30
        for layer in 0..<16 {
            var usage: [Double] = []
            var resident: [Bool] = []
            for expert in 0..<32 {
                let v: Int = (layer * 7 + expert * 13) % 29
                usage.append(Double(v) / 29)
                resident.append(v > 9)
            }
            s.expertUsage.append(usage)
            s.expertResident.append(resident)
        }
        return s
    }
}
