import Foundation
import Testing

/// `moe-serve perplexity` on the bundled demo model, against transformers' figure for the same
/// held-out text (`Tests/Fixtures/perplexity/reference.json`, written by
/// `scripts/perplexity_reference.py` on the store exported with `moe-serve export`), and
/// `--kl-base` / `--skip-missing-below` end to end.
@Suite(.serialized) struct PerplexityEndToEndTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/perplexity")
    static let text = fixtures.appendingPathComponent("py_compile.py.txt").path

    struct Reference: Decodable {
        let perplexity: Double
        let tokens_scored: Int
        let text_tokens: Int
        let context: Int
        let scoring: String
    }

    struct KL: Decodable {
        let mean: Double
        let median: Double
        let p99: Double
        let same_top1: Double
    }

    struct Cache: Decodable {
        struct Total: Decodable { let skipped_tokens: Int; let misses: Int }
        let total: Total
    }

    struct Output: Decodable {
        let perplexity: Double
        let mean_nll: Double
        let scoring: String
        let windows: Int
        let tokens_scored: Int
        let text_tokens: Int
        let kl: KL?
        let expert_cache: Cache?
    }

    static func perplexity(_ arguments: [String]) throws -> Output {
        let result = try MemoryBudgetEndToEndTests.run(["perplexity", "--text", text] + arguments)
        try #require(result.status == 0, "perplexity failed: \(result.stderr)")
        return try JSONDecoder().decode(Output.self, from: Data(result.stdout.utf8))
    }

    /// Both scorings, against transformers on the same windows (the fixture README has the commands).
    @Test(arguments: ["reference.json", "reference-second-half.json"])
    func matchesTransformersWithinTwoPercent(file: String) throws {
        let reference = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: Self.fixtures.appendingPathComponent(file)))
        let output = try Self.perplexity(["--context", String(reference.context), "--scoring", reference.scoring])
        #expect(output.text_tokens == reference.text_tokens)
        #expect(output.tokens_scored == reference.tokens_scored)
        #expect(output.scoring == reference.scoring)
        #expect(abs(output.perplexity / reference.perplexity - 1) < 0.02,
                "moe-serve \(output.perplexity) vs transformers \(reference.perplexity)")
    }

    @Test func windowsAndScoredPositions() throws {
        let all = try Self.perplexity(["--context", "256", "--max-windows", "4"])
        let half = try Self.perplexity(["--context", "256", "--max-windows", "4", "--scoring", "second-half", "--kv-cache-type", "f32"])
        #expect(all.windows == 4 && all.tokens_scored == 4 * 255 && all.text_tokens == 2056)
        #expect(half.windows == 4 && half.tokens_scored == 4 * (255 - 128))
        // Steps smaller than the unscored first half score the same positions (with f32 keys and
        // values: an f16 KV cache rounds the earlier steps' keys, so step size would matter there).
        let halfSmallSteps = try Self.perplexity(["--context", "256", "--max-windows", "4", "--scoring", "second-half", "--batch", "64",
                                                  "--kv-cache-type", "f32"])
        #expect(halfSmallSteps.tokens_scored == half.tokens_scored)
        // Not bit-equal: bf16 products of 64 rows and of 256 round differently (sgemm panels), and
        // the integer-dot kernels' 8-bit activations can turn such a last-bit difference into one
        // rounding step of an activation (measured 1.3e-4; 8e-7 with MOE_KERNELS=float). Scoring
        // other positions would move it by percents.
        #expect(abs(halfSmallSteps.perplexity / half.perplexity - 1) < 1e-3, "\(halfSmallSteps.perplexity) vs \(half.perplexity)")
        let short = FileManager.default.temporaryDirectory.appendingPathComponent("moe-serve-ppl-short-\(getpid()).txt")
        try "def f():\n    return 1\n".write(to: short, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: short) }
        let tooShort = try MemoryBudgetEndToEndTests.run(["perplexity", "--text", short.path, "--context", "512"])
        #expect(tooShort.status != 0 && tooShort.stderr.contains("fewer than one window"))
    }

    @Test func klAgainstItselfIsZeroAndAgainstF16KVIsSmall() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("moe-serve-ppl-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let base = directory.appendingPathComponent("exact.safetensors").path
        // Steps of at most 64 rows sum each token's experts in a fixed order, so a run repeats
        // bit for bit; larger prefill steps add experts as their reads finish (differences ~1e-8).
        let common = ["--context", "256", "--max-windows", "3", "--batch", "64"]
        let exact = try Self.perplexity(common + ["--kv-cache-type", "f32", "--save-logprobs", base])
        let again = try Self.perplexity(common + ["--kv-cache-type", "f32", "--kl-base", base])
        #expect(again.perplexity == exact.perplexity)
        #expect(again.kl!.mean == 0 && again.kl!.p99 == 0 && again.kl!.same_top1 == 1)
        let half = try Self.perplexity(common + ["--kv-cache-type", "f16", "--kl-base", base])
        #expect(half.kl!.mean > 0 && half.kl!.mean < 1e-3, "f16 KV: mean KL \(half.kl!.mean)")
        #expect(half.kl!.same_top1 > 0.97)
        #expect(abs(half.perplexity / exact.perplexity - 1) < 0.01)

        // A different text is refused, not compared.
        let other = try MemoryBudgetEndToEndTests.run(["perplexity", "--text", Self.text, "--context", "128", "--max-windows", "3", "--batch", "64", "--kl-base", base])
        #expect(other.status != 0 && other.stderr.contains("--kl-base"))
    }

    @Test func skippingWeakMissingExpertsIsCountedAndCostsLittle() throws {
        // A tight cache (the demo's experts are 15.7 MB) and token-by-token steps, as in decode.
        let common = ["--context", "128", "--max-windows", "2", "--batch", "1", "--expert-cache", "4MiB", "--kv-cache-type", "f32"]
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("moe-serve-skip-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let base = directory.appendingPathComponent("exact.safetensors").path
        let exact = try Self.perplexity(common + ["--save-logprobs", base])
        #expect(exact.expert_cache!.total.skipped_tokens == 0)
        let zero = try Self.perplexity(common + ["--skip-missing-below", "0", "--kl-base", base])
        #expect(zero.kl!.mean == 0 && zero.perplexity == exact.perplexity)
        let skip = try Self.perplexity(common + ["--skip-missing-below", "0.2", "--kl-base", base])
        #expect(skip.expert_cache!.total.skipped_tokens > 0)
        #expect(skip.expert_cache!.total.misses < exact.expert_cache!.total.misses)
        #expect(skip.kl!.mean > 0 && skip.kl!.mean < 0.5, "mean KL \(skip.kl!.mean)")
        #expect(skip.perplexity / exact.perplexity < 1.25)
    }
}
