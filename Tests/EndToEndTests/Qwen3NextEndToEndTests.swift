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
