import Foundation
import ModelFormats
import Testing
import Tokenization

/// The tokenizers of the qwen3next and minimax-m2 GGUF fixtures (`tokenizer.ggml.pre` `qwen2` and
/// `minimax-m2`), rebuilt from their metadata, encode the reference prompts as `transformers`
/// encoded them from the tokenizer.json the files were converted from
/// (`scripts/gguf/make_qwen3next_minimax_fixtures.py`).
@Suite struct GGUFQwen3NextMiniMaxTokenizerTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/gguf")
    /// `make_gguf_fixtures.PROMPTS`, the texts behind the reference's token ids.
    static let prompts = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b", "In 1492, sailors crossed the ocean"]

    @Test(arguments: [("qwen3next-Q8_0.gguf", "qwen3next", "qwen2"), ("minimax-m2-Q8_0.gguf", "minimax-m2", "minimax-m2")])
    func metadataTokenizerEncodesThePromptsAsTransformers(file: String, family: String, pre: String) throws {
        let reference = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.root.appendingPathComponent("qwen3next-minimax-reference.json"))) as? [String: Any]
        let expected = try #require((reference?["prompts"] as? [String: Any])?[family] as? [[Int]])
        let gguf = try GGUFModel(url: Self.root.appendingPathComponent(file))
        #expect(gguf.metadata["tokenizer.ggml.pre"]?.stringValue == pre)
        let files = try GGUFTokenizerFiles(metadata: gguf.metadata, file: file)
        let tokenizer = try Tokenizer(tokenizerJSON: files.tokenizerJSON, tokenizerConfigJSON: files.tokenizerConfigJSON,
                                      tokenizerFile: "\(file) (metadata)", configFile: "\(file) (metadata)")
        #expect(Self.prompts.map { tokenizer.encode($0, addSpecialTokens: false) } == expected)
    }
}
