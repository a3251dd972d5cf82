import Foundation
import Testing

/// The DeepSeek-family fixtures through the built `moe-serve`: `generate` with an expert cache
/// smaller than the experts (misses, evictions, the cross-layer predictor with each layer's own
/// routing rule) gives transformers' greedy tokens; an FP8 checkpoint generates as its bf16 twin.
@Suite(.serialized) struct DeepseekFamilyEndToEndTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    struct Reference: Decodable { let prompt: [Int]; let greedy: [Int] }

    static func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    static func generate(_ model: URL, prompt: [Int], count: Int, expertCache: Int) throws -> (tokens: [Int], evictions: Int) {
        let result = try MemoryBudgetEndToEndTests.run([
            "generate", "--model", model.path, "--tokens", prompt.map(String.init).joined(separator: ","),
            "--max-tokens", "\(count)", "--temperature", "0", "--expert-cache", "\(expertCache)"])
        #expect(result.status == 0, "generate failed: \(result.stderr)")
        let output = try json(result.stdout)
        let stats = (output["stats"] as? [String: Any])?["expert_cache"] as? [String: Any]
        let evictions = ((stats?["total"] as? [String: Any])?["evictions"] as? Int) ?? 0
        return (output["tokens"] as? [Int] ?? [], evictions)
    }

    /// Room for one more expert than top-k in every MoE layer: every step misses and evicts.
    static func tightCache(_ model: URL) throws -> Int {
        let inspect = try MemoryBudgetEndToEndTests.run(["inspect", model.path])
        #expect(inspect.status == 0, "inspect failed: \(inspect.stderr)")
        let info = try json(inspect.stdout)
        let bytes = try #require(info["expert_bytes"] as? Int), layers = try #require(info["moe_layers"] as? Int)
        let topK = try #require(info["experts_per_token"] as? Int), experts = try #require(info["experts_per_layer"] as? Int)
        return layers * min(experts, topK + 1) * bytes
    }

    @Test(arguments: ["deepseekv3-qlora-groups-yarn", "deepseekv2-lite-yarn", "glm4moe-partial-qknorm-bias", "minimaxm2-rotarydim"])
    func greedyTokensUnderATightExpertCacheMatchTransformers(fixture: String) throws {
        let model = Self.fixtures.appendingPathComponent("models/\(fixture)")
        let reference = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: model.appendingPathComponent("reference.json")))
        let (tokens, evictions) = try Self.generate(model, prompt: reference.prompt, count: reference.greedy.count,
                                                    expertCache: try Self.tightCache(model))
        #expect(tokens == reference.greedy)
        #expect(evictions > 0)
    }

    @Test func fp8CheckpointGeneratesAsItsBF16Twin() throws {
        let fp8 = Self.fixtures.appendingPathComponent("fp8/deepseekv3-fp8"), twin = Self.fixtures.appendingPathComponent("fp8/deepseekv3-bf16-twin")
        let prompt = [90, 64, 24, 125, 130, 40, 75, 82]
        let cache = try Self.tightCache(twin)
        let expected = try Self.generate(twin, prompt: prompt, count: 8, expertCache: cache).tokens
        #expect(expected.count == 8)
        #expect(try Self.generate(fp8, prompt: prompt, count: 8, expertCache: cache).tokens == expected)
    }
}
