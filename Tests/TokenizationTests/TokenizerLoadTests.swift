import Foundation
import Testing
@testable import Tokenization

@Suite struct TokenizerLoadTests {
    @Test func specialTokenIds() throws {
        let qwen = try Fixtures.tokenizer("qwen2")
        #expect(qwen.bosTokenId == nil)
        let imEnd = try #require(qwen.tokenId(for: "<|im_end|>"))
        let eot = try #require(qwen.tokenId(for: "<|endoftext|>"))
        #expect(qwen.eosTokenIds == [imEnd, eot])
        #expect(qwen.vocabularySize == 1506)

        let mistral = try Fixtures.tokenizer("mistral")
        #expect(mistral.bosTokenId == 1)
        #expect(mistral.eosTokenIds == [2])
        #expect(mistral.tokenId(for: "<0x0A>") == 13)
        #expect(mistral.encode("") == [1])
    }

    @Test func missingChatTemplateFallsBackToChatML() throws {
        let t = try Fixtures.tokenizer("neox")
        #expect(t.chatTemplate.source == ChatTemplate.chatMLSource)
    }

    @Test func chatTemplateFromConfigIsUsed() throws {
        let dir = try temporaryModel(style: "qwen2", config: [
            "eos_token": "<|im_end|>",
            "chat_template": try String(contentsOf: Fixtures.root.appendingPathComponent("chat_templates/qwen2-instruct.jinja"), encoding: .utf8),
        ])
        defer { try? FileManager.default.removeItem(at: dir) }
        let t = try Tokenizer.load(directory: dir)
        let prompt = try t.chatTemplate.render(messages: [ChatMessage(role: "user", content: "Hi")], addGenerationPrompt: true)
        #expect(prompt.hasPrefix("<|im_start|>system\nYou are a helpful assistant."))
        let ids = t.encode(prompt, addSpecialTokens: false)
        #expect(ids.first == t.tokenId(for: "<|im_start|>"))
    }

    /// A `chat_template.jinja` file (how gpt-oss ships its harmony template) is the template, and
    /// wins over tokenizer_config.json's, as in transformers.
    @Test func chatTemplateJinjaFileIsUsed() throws {
        let dir = try temporaryModel(style: "qwen2", config: ["eos_token": "<|im_end|>", "chat_template": "{{ 'from config' }}"])
        defer { try? FileManager.default.removeItem(at: dir) }
        try "{%- for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{%- endfor %}"
            .write(to: dir.appendingPathComponent("chat_template.jinja"), atomically: true, encoding: .utf8)
        let t = try Tokenizer.load(directory: dir)
        let prompt = try t.chatTemplate.render(messages: [ChatMessage(role: "user", content: "Hi")], addGenerationPrompt: true)
        #expect(prompt == "<|start|>user<|message|>Hi<|end|>")
    }

    @Test func unsupportedChatTemplateFailsAtLoad() throws {
        let dir = try temporaryModel(style: "qwen2", config: ["chat_template": "{{ messages | wordwrap }}"])
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect {
            try Tokenizer.load(directory: dir)
        } throws: { error in
            let text = "\(error)"
            return text.contains("tokenizer_config.json") && text.contains("wordwrap")
        }
    }

    @Test(arguments: [
        (#"{"type": "WordPiece", "vocab": {}}"#, "WordPiece"),
    ])
    func unsupportedModelFailsAtLoad(model: String, mention: String) throws {
        let json = #"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null, "model": \#(model)}"#
        #expect {
            try Tokenizer(tokenizerJSON: Data(json.utf8))
        } throws: { error in "\(error)".contains(mention) && "\(error)".contains("tokenizer.json") }
    }

    @Test(arguments: [
        (#""normalizer": {"type": "BertNormalizer"}"#, "BertNormalizer"),
        (#""pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\d+"}, "behavior": "Isolated", "invert": false}"#, "Split regex"),
        (#""pre_tokenizer": {"type": "Whitespace"}"#, "Whitespace"),
        (#""decoder": {"type": "WordPiece"}"#, "WordPiece"),
        (#""post_processor": {"type": "Weird"}"#, "Weird"),
        (#""normalizer": {"type": "Replace", "pattern": {"Regex": " +"}, "content": " "}"#, "regex"),
    ])
    func unsupportedComponentsFailAtLoad(component: String, mention: String) throws {
        var parts = [
            "normalizer": #""normalizer": null"#, "pre_tokenizer": #""pre_tokenizer": null"#,
            "post_processor": #""post_processor": null"#, "decoder": #""decoder": null"#,
        ]
        let key = String(component.dropFirst().prefix { $0 != "\"" })
        parts[key] = component
        let json = "{\"version\": \"1.0\", \"added_tokens\": [], " + parts.values.sorted().joined(separator: ", ")
            + #", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}"#
        #expect {
            try Tokenizer(tokenizerJSON: Data(json.utf8))
        } throws: { error in
            "\(error)".contains(mention) && "\(error)".contains("tokenizer.json")
        }
    }

    /// A fresh directory with `style`'s tokenizer and `config`; the caller removes it.
    private func temporaryModel(style: String, config: [String: String]) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(
            at: Fixtures.directory(style).appendingPathComponent("tokenizer.json"),
            to: dir.appendingPathComponent("tokenizer.json"))
        let data = try JSONSerialization.data(withJSONObject: config)
        try data.write(to: dir.appendingPathComponent("tokenizer_config.json"))
        return dir
    }
}
