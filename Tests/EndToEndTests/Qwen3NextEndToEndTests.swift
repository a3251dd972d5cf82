import Foundation
import Testing

/// The built `moe-serve` on a Qwen3-Next checkpoint (the `qwen3next-hybrid-gqa` fixture with the
/// Qwen2 BPE tokenizer fixture beside it, so that `serve` has a tokenizer): `generate` returns
/// transformers' greedy tokens from the checkpoint directory, from a packed store read through
/// an expert cache smaller than the experts, and the server returns the same text to
/// concurrent requests (their prefill chunks and decode steps batched), then exits cleanly.
@Suite(.serialized) struct Qwen3NextEndToEndTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    static let fixture = root.appendingPathComponent("Fixtures/models/qwen3next-hybrid-gqa")

    struct Reference: Decodable { let prompt: [Int]; let greedy: [Int] }
    struct Generated: Decodable { let tokens: [Int]; let text: String? }

    /// The fixture plus `tokenizer.json` in a fresh directory.
    static func modelDirectory() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("moe-qwen3next-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for name in try FileManager.default.contentsOfDirectory(atPath: fixture.path) where name != "reference.json" {
            try FileManager.default.copyItem(at: fixture.appendingPathComponent(name), to: directory.appendingPathComponent(name))
        }
        for name in ["tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(at: root.appendingPathComponent("Fixtures/tokenizers/qwen2/\(name)"),
                                             to: directory.appendingPathComponent(name))
        }
        return directory
    }

    static func generate(_ model: URL, _ prompt: [Int], _ extra: [String] = []) throws -> Generated {
        let result = try MemoryBudgetEndToEndTests.run(["generate", "--model", model.path, "--tokens",
                                                        prompt.map(String.init).joined(separator: ","), "--max-tokens", "8"] + extra)
        try #require(result.status == 0, "generate failed: \(result.stderr)")
        return try JSONDecoder().decode(Generated.self, from: Data(result.stdout.utf8))
    }

    @Test func generateFromTheCheckpointAndFromAPackedStoreMatchesTransformers() throws {
        let reference = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: Self.fixture.appendingPathComponent("reference.json")))
        let model = try Self.modelDirectory()
        defer { try? FileManager.default.removeItem(at: model) }
        #expect(try Self.generate(model, reference.prompt).tokens == reference.greedy)

        let store = model.appendingPathComponent("store")
        let packed = try MemoryBudgetEndToEndTests.run(["pack", model.path, store.path])
        try #require(packed.status == 0, "pack failed: \(packed.stderr)")
        // 32 experts of 4 KiB (blob-aligned) in four layers; a 48 KiB cache holds 12 of them.
        let cached = try Self.generate(store, reference.prompt, ["--expert-cache", "48KiB", "--prefetch", "off"])
        #expect(cached.tokens == reference.greedy)
    }

    /// The chunked form of the delta rule (`MOE_DELTA_RULE=chunked`, transformers' prefill) still
    /// gives transformers' greedy tokens; the default runs the recurrent form in every step.
    @Test func theChunkedDeltaRuleStillMatchesTransformers() throws {
        let reference = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: Self.fixture.appendingPathComponent("reference.json")))
        let model = try Self.modelDirectory()
        defer { try? FileManager.default.removeItem(at: model) }
        let result = try MemoryBudgetEndToEndTests.run(["generate", "--model", model.path, "--tokens",
                                                        reference.prompt.map(String.init).joined(separator: ","), "--max-tokens", "8"],
                                                       shellPrefix: "MOE_DELTA_RULE=chunked")
        try #require(result.status == 0, "generate failed: \(result.stderr)")
        #expect(try JSONDecoder().decode(Generated.self, from: Data(result.stdout.utf8)).tokens == reference.greedy)
    }

    /// A conversation's second turn over HTTP (token ids; turn 2 = turn 1's 70 tokens, its 12-token
    /// reply and 20 new tokens): the server reuses turn 1's prompt and reply (`timings.cache_n` 81,
    /// `usage.prompt_tokens_details.cached_tokens` on the OpenAI route) with the default
    /// `prompt_cache_partial = exact`, and the reply's tokens and probabilities equal a
    /// `cache_prompt: false` run's exactly.
    @Test func aSecondTurnReusesTheFirstAndMatchesAnUncachedRun() throws {
        let model = try Self.modelDirectory()
        defer { try? FileManager.default.removeItem(at: model) }
        let server = try RunningServer(arguments: ["--model", model.path])
        func json(_ text: String) throws -> [String: Any] {
            try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "\(text)")
        }
        let turn1 = (0..<70).map { ($0 * 13 + 5) % 97 }
        let first = try json(server.curl("/completion", ["-d", #"{"prompt": \#(turn1), "n_predict": 12, "temperature": 0, "ignore_eos": true}"#]))
        let reply = try #require(first["tokens"] as? [Int], "\(first)")
        #expect(reply.count == 12)
        let turn2 = turn1 + reply + (0..<20).map { ($0 * 3 + 1) % 97 }
        func second(cache: Bool) throws -> [String: Any] {
            try json(server.curl("/completion", ["-d", #"{"prompt": \#(turn2), "n_predict": 8, "temperature": 0, "n_probs": 3, "ignore_eos": true, "cache_prompt": \#(cache)}"#]))
        }
        let cached = try second(cache: true)
        let timings = try #require(cached["timings"] as? [String: Any], "\(cached)")
        #expect(timings["cache_n"] as? Int == turn1.count + reply.count - 1, "\(timings)")
        #expect(timings["prompt_n"] as? Int == turn2.count - (turn1.count + reply.count - 1), "\(timings)")
        let uncached = try second(cache: false)
        #expect((uncached["timings"] as? [String: Any])?["cache_n"] as? Int == 0)
        #expect(cached["tokens"] as? [Int] == uncached["tokens"] as? [Int])
        #expect((cached["completion_probabilities"] as? NSArray) == (uncached["completion_probabilities"] as? NSArray), "\(cached) \(uncached)")
        // The OpenAI route reports the reuse too (the longer prompt extends turn 2's retained cache).
        let openAI = try json(server.curl("/v1/completions", ["-d", #"{"prompt": \#(turn2 + [7]), "max_tokens": 2, "temperature": 0}"#]))
        let details = (openAI["usage"] as? [String: Any])?["prompt_tokens_details"] as? [String: Any]
        #expect((details?["cached_tokens"] as? Int ?? 0) >= turn2.count, "\(openAI)")
        #expect(server.stop() == 0)
    }

    @Test func serveAnswersConcurrentRequestsAsOneAlone() throws {
        let reference = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: Self.fixture.appendingPathComponent("reference.json")))
        let model = try Self.modelDirectory()
        defer { try? FileManager.default.removeItem(at: model) }
        let expected = try Self.generate(model, reference.prompt)
        let server = try RunningServer(arguments: ["--model", model.path])
        let body = #"{"prompt": \#(reference.prompt), "max_tokens": 8, "temperature": 0}"#
        let alone = try ServeEndToEndTests.text(server.curl("/v1/completions", ["-d", body]))
        #expect(alone == expected.text)
        let together = Results()
        DispatchQueue.concurrentPerform(iterations: 3) { _ in
            together.add((try? server.curl("/v1/completions", ["-d", body])).flatMap { try? ServeEndToEndTests.text($0) } ?? "<failed>")
        }
        #expect(together.values == Array(repeating: alone, count: 3))
        #expect(server.stop() == 0)
    }
}
