import ExpertCache
import Foundation
import ModelFormats
import Testing
import Tokenization
@testable import Runtime

@Suite struct GGUFRuntimeTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")
    static func gguf(_ name: String) -> URL { root.appendingPathComponent("gguf/\(name)") }

    /// A GGUF under a budget whose expert cache holds only a layer's top-k: experts are read
    /// from the file on demand (O_DIRECT) and the greedy tokens are those of all experts in RAM.
    @Test func aGGUFUnderABudgetGeneratesAsInRAM() throws {
        let url = Self.gguf("qwen3moe-Q4_K_M.gguf")
        let prompt = [3, 1, 4, 1, 5, 9]
        var spec = RuntimeSpecification(model: url)
        spec.kvPrecision = .f32
        let inRAM = try ModelRuntime.open(spec)
        #expect(inRAM.cache == nil)
        #expect(inRAM.tokenizer != nil)
        let reference = try RuntimeTests.generate(inRAM, prompt: prompt, maxTokens: 6)
        inRAM.close()

        let gguf = try GGUFModel(url: url)
        let config = gguf.config
        let loader = try CheckpointExpertLoader(config: config, weights: gguf, names: config.architecture.definition)
        spec.memoryBudgetBytes = 1 << 30
        spec.expertCacheBytes = config.moeLayers.count * config.expertsPerToken * loader.expertByteCount(layer: 0, expert: 0)
        spec.policy = .lru
        let runtime = try ModelRuntime.open(spec)
        defer { runtime.close() }
        #expect(runtime.plan?.denseBytes == gguf.denseByteCount)
        #expect(try RuntimeTests.generate(runtime, prompt: prompt, maxTokens: 6) == reference)
        #expect((runtime.cache?.statistics().total.evictions ?? 0) > 0)
    }

    /// The tokenizer rebuilt from a GGUF's metadata encodes the tokenizer fixture's cases as
    /// the same model's tokenizer.json does (llama.cpp's converter wrote the GGUF from it).
    @Test func tokenizerFromMetadataEncodesAsTokenizerJSON() throws {
        let fromGGUF = try Tokenizer.load(gguf: GGUFModel(url: Self.gguf("qwen3moe-Q4_K_M.gguf")))
        let fromJSON = try Tokenizer.load(directory: Self.root.appendingPathComponent("tokenizers/qwen2"))
        let cases = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.root.appendingPathComponent("tokenizers/qwen2/cases.json"))) as? [String: Any]
        let texts = (cases?["encodings"] as? [[String: Any]] ?? []).compactMap { $0["text"] as? String }
        #expect(texts.count > 20)
        var differing: [String] = []
        for text in texts where fromGGUF.encode(text) != fromJSON.encode(text) { differing.append(text) }
        // Attributes GGUF does not carry (an added token's lstrip/rstrip/single_word) are the
        // only allowed source of difference: such texts contain those tokens.
        let attributeTokens = ["[MASK]", "specialword"]
        let unexplained = differing.filter { text in !attributeTokens.contains { text.contains($0) } }
        #expect(unexplained.isEmpty, "encodings differ for \(unexplained.prefix(5))")
        #expect(fromGGUF.eosTokenIds == fromJSON.eosTokenIds)
        for id in [0, 5, 300, 1499, 1503] { #expect(fromGGUF.decode([id]) == fromJSON.decode([id])) }
    }

    /// A SentencePiece vocabulary (`tokenizer.ggml.model = llama`: tokens, scores, token types,
    /// `<0xNN>` byte tokens, add_space_prefix, add_bos) written by llama.cpp's converter from a
    /// `tokenizer.model` (`scripts/gguf/make_spm_fixture.py`) encodes every case as llama.cpp's
    /// `/tokenize` and the sentencepiece library do (BOS first), and decodes back to the text.
    @Test func sentencePieceTokenizerFromMetadataEncodesAsLlamaCpp() throws {
        let directory = Self.root.appendingPathComponent("gguf/spm")
        let tokenizer = try Tokenizer.load(gguf: GGUFModel(url: directory.appendingPathComponent("mixtral-spm-Q8_0.gguf")))
        let cases = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: directory.appendingPathComponent("cases.json"))) as? [[String: Any]])
        #expect(cases.count >= 10)
        for entry in cases {
            let text = try #require(entry["text"] as? String), ids = try #require(entry["ids"] as? [Int])
            #expect(ids == entry["sentencepiece"] as? [Int], "the fixture's two references disagree on \(text.debugDescription)")
            let encoded = tokenizer.encode(text)
            #expect(encoded == ids, "\(text.debugDescription): \(encoded) vs llama.cpp \(ids)")
            #expect(tokenizer.decode(Array(encoded.dropFirst())) == text, "\(text.debugDescription) does not decode back")
        }
    }
}
