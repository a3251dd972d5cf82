import Foundation
import Testing

/// Tool calls in the DeepSeek-V3, GLM-4.5 and gpt-oss (harmony) formats through the built
/// `moe-serve` and the real `openai` client (`scripts/tool_calls_check.py`, run with `MOE_PYTHON`
/// as `scripts/test.sh` sets it). Each family's tiny GGUF fixture is packed into a store (its
/// 1,536-token byte-level vocabulary can spell any text, so a forced call's layout and arguments
/// can be generated), and a small template of our own that renders tools and past calls as the
/// family does (`Tests/Fixtures/tool_templates`, not the published ones) is put beside it as
/// `chat_template.jinja`; the server picks the call format from it.
@Suite(.serialized) struct ToolCallFormatsEndToEndTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test(arguments: [("deepseek2/deepseek2-Q8_0.gguf", "deepseek-v3"),
                      ("glm4moe-Q8_0.gguf", "glm-4.5"),
                      ("gpt-oss-MXFP4_MOE.gguf", "harmony")])
    func forcedToolCallsParseWithTheOpenAIClient(gguf: String, family: String) throws {
        guard let python = ProcessInfo.processInfo.environment["MOE_PYTHON"] else { return } // set by scripts/test.sh
        let store = FileManager.default.temporaryDirectory.appendingPathComponent("moe-tools-\(family)-\(getpid())-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: store) }
        let packed = try MemoryBudgetEndToEndTests.run(["pack", Self.root.appendingPathComponent("Tests/Fixtures/gguf/\(gguf)").path, store.path])
        try #require(packed.status == 0, "pack failed: \(packed.stderr)")
        try FileManager.default.copyItem(at: Self.root.appendingPathComponent("Tests/Fixtures/tool_templates/\(family).jinja"),
                                         to: store.appendingPathComponent("chat_template.jinja"))

        let server = try RunningServer(arguments: ["--model", store.path])
        let script = Process()
        script.executableURL = URL(fileURLWithPath: python)
        script.arguments = [Self.root.appendingPathComponent("scripts/tool_calls_check.py").path, "http://127.0.0.1:\(server.port)", family]
        let out = Pipe()
        script.standardOutput = out
        script.standardError = out
        try script.run()
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        script.waitUntilExit()
        print(output)
        #expect(script.terminationStatus == 0, "\(output)")
        #expect(output.contains("\(family): 0 failed"), "\(output)")
        #expect(server.stop() == 0)
    }
}
