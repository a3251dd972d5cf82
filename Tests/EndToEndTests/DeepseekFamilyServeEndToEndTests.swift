import Foundation
import Testing

/// `serve` on the tiny DeepSeek-V3 and GLM-4.5 checkpoints with a tokenizer and chat template of their
/// family beside them (Tests/Fixtures/tokenizers/*-serve, scripts/make_deepseek_family_tokenizers.py: the
/// family's pre-tokenizer and special tokens, a vocabulary below the fixtures' 131 ids, a template with
/// the family's thinking switch). Through the real binary: the rendered prompt is transformers'
/// `apply_chat_template` text byte for byte, it tokenizes to transformers' ids, and a greedy chat
/// completion answers what `generate` answers for those ids.
@Suite(.serialized) struct DeepseekFamilyServeEndToEndTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    struct Chat: Decodable {
        let rendered: String
        let prompt_ids: [Int]
    }

    /// The model fixture plus the family's serve tokenizer in a fresh directory.
    static func modelDirectory(model: String, tokenizer: String) throws -> URL {
        let fixture = root.appendingPathComponent("models/\(model)")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("moe-\(model)-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for name in try FileManager.default.contentsOfDirectory(atPath: fixture.path) where name != "reference.json" {
            try FileManager.default.copyItem(at: fixture.appendingPathComponent(name), to: directory.appendingPathComponent(name))
        }
        for name in ["tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(at: root.appendingPathComponent("tokenizers/\(tokenizer)/\(name)"),
                                             to: directory.appendingPathComponent(name))
        }
        return directory
    }

    static func object(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "not a JSON object: \(text)")
    }

    static func body(_ value: [String: Any]) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: value), as: UTF8.self)
    }

    @Test(arguments: [("deepseekv3-qlora-groups-yarn", "deepseek-v3-serve", "thinking"),
                      ("glm4moe-partial-qknorm-bias", "glm-4.5-serve", "enable_thinking")])
    func chatCompletionMatchesTransformersPromptAndGenerate(model: String, tokenizer: String, thinkingSwitch: String) throws {
        let chatFile = Self.root.appendingPathComponent("tokenizers/\(tokenizer)/chat.json")
        let chat = try JSONDecoder().decode(Chat.self, from: Data(contentsOf: chatFile))
        let document = try Self.object(String(decoding: try Data(contentsOf: chatFile), as: UTF8.self))
        let messages = try #require(document["messages"] as? [[String: Any]])
        let kwargs = try #require(document["extra"] as? [String: Any])
        #expect(kwargs[thinkingSwitch] as? Bool == false)
        let directory = try Self.modelDirectory(model: model, tokenizer: tokenizer)
        defer { try? FileManager.default.removeItem(at: directory) }

        let generated = try MemoryBudgetEndToEndTests.run([
            "generate", "--model", directory.path, "--tokens", chat.prompt_ids.map(String.init).joined(separator: ","),
            "--max-tokens", "8", "--temperature", "0"])
        try #require(generated.status == 0, "generate failed: \(generated.stderr)")
        let expected = try Self.object(generated.stdout)
        let expectedText = try #require(expected["text"] as? String)
        let expectedTokens = try #require(expected["tokens"] as? [Int])

        let server = try RunningServer(arguments: ["--model", directory.path])
        let rendered: [String: Any] = try Self.object(server.curl("/apply-template", ["-d", try Self.body(["messages": messages, "chat_template_kwargs": kwargs])]))
        #expect((rendered["prompt"] as? String).map { Array($0.utf8) } == Array(chat.rendered.utf8), "\(rendered)")
        let tokenized: [String: Any] = try Self.object(server.curl("/tokenize", ["-d", try Self.body(["content": chat.rendered])]))
        #expect(tokenized["tokens"] as? [Int] == chat.prompt_ids)

        let response: [String: Any] = try Self.object(server.curl("/v1/chat/completions", ["-d", try Self.body([
            "messages": messages, "chat_template_kwargs": kwargs, "max_tokens": 8, "temperature": 0])]))
        let choice = try #require((response["choices"] as? [[String: Any]])?.first, "\(response)")
        let message = try #require(choice["message"] as? [String: Any])
        #expect(message["content"] as? String == expectedText, "\(response)")
        let usage = try #require(response["usage"] as? [String: Any])
        #expect(usage["prompt_tokens"] as? Int == chat.prompt_ids.count)
        #expect(usage["completion_tokens"] as? Int == expectedTokens.count)
        #expect(server.stop() == 0)
    }
}
