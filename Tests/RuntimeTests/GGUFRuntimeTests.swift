import ExpertCache
import Foundation
import JSONCoding
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

    /// GGUF metadata as llama.cpp's converter writes it for a byte-level BPE tokenizer.json:
    /// tokens by id, merges as "a b" strings, special added tokens as control (3), the others as
    /// user-defined (4), `pre` the converter's name for the family.
    static func byteLevelMetadata(tokenizerDirectory: URL, pre: String) throws -> [String: GGUFValue] {
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: tokenizerDirectory.appendingPathComponent("tokenizer.json"))) as! [String: Any]
        let model = json["model"] as! [String: Any]
        var byId: [Int: (String, Int)] = [:]
        for (token, id) in model["vocab"] as! [String: Int] { byId[id] = (token, 1) }
        for added in json["added_tokens"] as! [[String: Any]] {
            byId[added["id"] as! Int] = (added["content"] as! String, (added["special"] as? Bool ?? false) ? 3 : 4)
        }
        let count = (byId.keys.max() ?? -1) + 1
        let tokens = (0..<count).map { byId[$0] ?? ("[PAD\($0)]", 5) }
        let merges: [String] = (model["merges"] as! [Any]).map { merge in
            if let pair = merge as? [String] { return pair.joined(separator: " ") }
            return merge as! String
        }
        return [
            "tokenizer.ggml.model": .string("gpt2"),
            "tokenizer.ggml.pre": .string(pre),
            "tokenizer.ggml.tokens": .array(tokens.map { .string($0.0) }),
            "tokenizer.ggml.token_type": .array(tokens.map { .signed(Int64($0.1)) }),
            "tokenizer.ggml.merges": .array(merges.map { .string($0) }),
        ]
    }

    /// DeepSeek LLM/V2 (`deepseek-llm`), DeepSeek-V3 (`deepseek-v3`), GLM-4.5 (`glm4`), gpt-oss
    /// (`gpt-4o`: o200k, tested on the MiniMax-M2 fixture, whose Split is the same pattern removed
    /// inverted, which keeps the same pieces since the pattern covers every character) and
    /// MiniMax-M2 (`minimax-m2`, the same o200k pattern in llama.cpp) GGUFs name
    /// pre-tokenizers that are a `Sequence` of Splits or a long pattern: the tokenizer
    /// rebuilt from such metadata encodes every case of the family's fixture as its tokenizer.json
    /// does (without special tokens: the BOS and GLM's `[gMASK]<sop>` post-processors are the
    /// add-bos flags' job).
    @Test(arguments: [("deepseek-v2", "deepseek-llm"), ("deepseek-v3", "deepseek-v3"), ("glm-4.5", "glm4"), ("minimax-m2", "gpt-4o"), ("minimax-m2", "minimax-m2")])
    func multiSplitPreTokenizersFromMetadataEncodeAsTokenizerJSON(fixture: String, pre: String) throws {
        let directory = Self.root.appendingPathComponent("tokenizers/\(fixture)")
        let files = try GGUFTokenizerFiles(metadata: Self.byteLevelMetadata(tokenizerDirectory: directory, pre: pre), file: "\(fixture).gguf")
        let fromGGUF = try Tokenizer(tokenizerJSON: files.tokenizerJSON, tokenizerConfigJSON: files.tokenizerConfigJSON,
                                     tokenizerFile: "\(fixture) (metadata)", configFile: "\(fixture) (metadata)")
        // JSONCoding, not Foundation: Foundation's parser drops U+FEFF inside strings on Linux.
        let cases = try JSON.parse([UInt8](Data(contentsOf: directory.appendingPathComponent("cases.json"))), options: .lenient)
        let encodings = cases["encodings"]?.arrayValue ?? []
        #expect(encodings.count > 100)
        var differing: [String] = []
        for encoding in encodings {
            let text = encoding["text"]!.stringValue!
            let expected = encoding["ids_no_special"]!.arrayValue!.map { $0.intValue! }
            if fromGGUF.encode(text, addSpecialTokens: false) != expected { differing.append(text) }
        }
        #expect(differing.isEmpty, "\(differing.count) of \(encodings.count) encodings differ, e.g. \(differing.prefix(3).map(\.debugDescription))")
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
