import Foundation
import Testing

/// The chat page in a real browser: headless Chromium (Debian's `chromium`, installed by
/// scripts/install-deps.sh) loads `/chat` from the built `moe-serve`, sends a message, and the
/// streamed reply, its timings line, its per-reply experts line and a screenshot are checked
/// (scripts/chat_page_check.py drives Chromium over the DevTools pipe).
@Suite(.serialized) struct ChatPageEndToEndTests {
    static let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test(.enabled(if: chromium != nil, "skipped: chromium is not installed (scripts/install-deps.sh installs Debian's chromium)"))
    func chatPageStreamsAReplyInHeadlessChromium() throws {
        let server = try RunningServer(arguments: ["--memory-budget", "96MiB"])
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let shot = FileManager.default.temporaryDirectory.appendingPathComponent("moe-chat-\(getpid()).png")
        defer { try? FileManager.default.removeItem(at: shot) }
        let script = Process()
        script.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        script.arguments = [root.appendingPathComponent("scripts/chat_page_check.py").path, "http://127.0.0.1:\(server.port)", shot.path]
        let out = Pipe()
        let err = Pipe()
        script.standardOutput = out
        script.standardError = err
        try script.run()
        let output = out.fileHandleForReading.readDataToEndOfFile()
        let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        script.waitUntilExit()
        #expect(script.terminationStatus == 0, "\(errors)")
        struct Result: Decodable {
            let state: String, reply: String, meta: String, experts: String
            let screenshot_bytes: Int, width: Int, height: Int
        }
        let result = try JSONDecoder().decode(Result.self, from: output)
        #expect(result.state == "done")
        #expect(!result.reply.isEmpty)
        #expect(result.meta.contains("generated in") && result.meta.contains("prompt tokens"))
        // The reply's own expert record (`return_experts`): every layer of the demo model's 8, and
        // no expert credited with more tokens than the reply ran (generated - 1 decode inputs; the
        // demo model routes each token to 4 of 32 experts).
        #expect(result.experts.hasPrefix("experts of this reply"))
        #expect(result.experts.contains("L0:") && result.experts.contains("L7:"))
        let generated = Int(result.meta.split(separator: "·")[1].split(separator: " ").first { Int($0) != nil } ?? "") ?? 0
        let counts = result.experts.split(separator: "×").dropFirst().compactMap { Int($0.prefix { $0.isNumber }) }
        #expect(!counts.isEmpty && counts.allSatisfy { $0 >= 1 && $0 <= max(generated - 1, 0) }, "\(result.experts) / \(result.meta)")
        // A real rendering of a 1000-wide window with text in it, not a blank page (~2 KB).
        #expect(result.width == 1000 && result.height > 400)
        #expect(result.screenshot_bytes > 20_000)
        #expect(server.stop() == 0)
    }
}
