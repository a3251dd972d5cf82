import Foundation
import Testing

/// Low-bit misses end to end (issue 27 item 2, docs/LOSSY.md), on a copy of the demo store given
/// low-bit copies by the built `moe-serve low-bit-copies`: `perplexity --low-bit-misses on` stays
/// within a stated KL of the exact run under the same quarter-size expert cache, and `serve
/// --low-bit-misses on` counts low-bit uses and promotions in `/metrics` (none without it).
@Suite(.serialized) struct LowBitEndToEndTests {
    static let demo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("DemoModel")

    /// A copy of the demo store with low-bit copies, made once per test run.
    static let store: Result<URL, Error> = Result {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("moe-lowbit-e2e-\(getpid())")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for name in ["manifest.json", "dense.bin", "experts.bin", "config.json", "tokenizer.json", "tokenizer_config.json",
                     "generation_config.json", "chat_template.jinja", "predictor-probes.safetensors"] {
            try FileManager.default.copyItem(at: demo.appendingPathComponent(name), to: dir.appendingPathComponent(name))
        }
        let result = try MemoryBudgetEndToEndTests.run(["low-bit-copies", dir.path])
        guard result.status == 0 else { throw NSError(domain: "low-bit-copies", code: Int(result.status), userInfo: [NSLocalizedDescriptionKey: result.stderr]) }
        return dir
    }

    struct Output: Decodable {
        struct KL: Decodable { let mean: Double; let p99: Double; let same_top1: Double }
        struct Cache: Decodable {
            struct Total: Decodable { let misses: Int; let low_bit_uses: Int; let low_bit_promotions: Int; let low_bit_bytes: Int }
            let total: Total
        }
        let perplexity: Double
        let kl: KL?
        let expert_cache: Cache?
    }

    static func perplexity(_ model: URL, _ extra: [String]) throws -> Output {
        let result = try MemoryBudgetEndToEndTests.run(["perplexity", "--model", model.path, "--text", PerplexityEndToEndTests.text,
                                                         "--context", "512", "--max-windows", "1", "--batch", "1",
                                                         "--expert-cache", "3840KiB"] + extra)
        try #require(result.status == 0, "perplexity failed: \(result.stderr)")
        return try JSONDecoder().decode(Output.self, from: Data(result.stdout.utf8))
    }

    /// Measured on py_compile.py's first window: mean KL 0.002-0.004 nats, same top-1 ~97%,
    /// perplexity +0.1-0.3%; the bounds leave room for the routing differences of a noisy machine.
    @Test func lowBitMissesStayWithinTheirKLOfExact() throws {
        let store = try Self.store.get()
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("moe-lowbit-base-\(getpid()).safetensors")
        defer { try? FileManager.default.removeItem(at: base) }
        let exact = try Self.perplexity(store, ["--save-logprobs", base.path])
        #expect(exact.expert_cache?.total.low_bit_uses == 0)
        let lossy = try Self.perplexity(store, ["--kl-base", base.path, "--low-bit-misses", "on"])
        let kl = try #require(lossy.kl)
        let total = try #require(lossy.expert_cache?.total)
        #expect(total.low_bit_uses > 100 && total.low_bit_promotions > 0 && total.low_bit_bytes > 0, "\(total)")
        #expect(kl.mean > 0 && kl.mean < 0.02, "mean KL \(kl.mean)")
        #expect(kl.same_top1 > 0.9, "same top-1 \(kl.same_top1)")
        #expect(abs(lossy.perplexity / exact.perplexity - 1) < 0.02, "\(lossy.perplexity) vs \(exact.perplexity)")
        print("low-bit misses: perplexity \(exact.perplexity) -> \(lossy.perplexity), mean KL \(kl.mean), same top-1 \(kl.same_top1), \(total.low_bit_uses) low-bit uses, \(total.low_bit_promotions) promotions")

        // A store without copies is refused in one line.
        let plain = try MemoryBudgetEndToEndTests.run(["perplexity", "--model", Self.demo.path, "--text", PerplexityEndToEndTests.text,
                                                        "--max-windows", "1", "--expert-cache", "3840KiB", "--low-bit-misses", "on"])
        #expect(plain.status != 0 && plain.stderr.contains("no low-bit copies"), "\(plain.stderr)")
    }

    @Test func metricsCountLowBitUsesOnlyWhenOn() throws {
        let store = try Self.store.get()
        func serve(_ extra: [String]) throws -> (String, Int32) {
            let server = try RunningServer(arguments: ["--model", store.path] + WeakExpertSkippingEndToEndTests.arguments + extra)
            for prompt in WeakExpertSkippingEndToEndTests.prompts {
                let body = try JSONSerialization.data(withJSONObject: ["prompt": prompt, "max_tokens": 16, "temperature": 0])
                _ = try server.curl("/v1/completions", ["-H", "Content-Type: application/json", "-d", String(decoding: body, as: UTF8.self)])
            }
            let metrics = try WeakExpertSkippingEndToEndTests.metricsShowingMisses(server)
            return (metrics, server.stop())
        }
        let (on, onStatus) = try serve(["--low-bit-misses", "on"])
        #expect(onStatus == 0)
        let uses = try #require(WeakExpertSkippingEndToEndTests.value("moe_expert_low_bit_uses_total", in: on), "metrics: \(on)")
        #expect(uses > 0)
        #expect((WeakExpertSkippingEndToEndTests.value("moe_expert_low_bit_promotions_total", in: on) ?? 0) > 0)
        let (off, offStatus) = try serve([])
        #expect(offStatus == 0)
        #expect(WeakExpertSkippingEndToEndTests.value("moe_expert_low_bit_uses_total", in: off) ?? 0 == 0)
        #expect((WeakExpertSkippingEndToEndTests.value("moe_expert_cache_misses_total", in: off) ?? 0) > 0)
    }

    /// `low_bit_misses = auto` exports its decision. The demo's 60 KiB experts are below the
    /// bandwidth probe's minimum, so nothing is measured and auto stays exact (never lossy
    /// without a measurement): gauges 0, no low-bit uses, misses as exact.
    @Test func autoExportsItsDecisionAndStaysExactUnmeasured() throws {
        let store = try Self.store.get()
        let server = try RunningServer(arguments: ["--model", store.path] + WeakExpertSkippingEndToEndTests.arguments + ["--low-bit-misses", "auto"])
        let body = try JSONSerialization.data(withJSONObject: ["prompt": WeakExpertSkippingEndToEndTests.prompts[0], "max_tokens": 16, "temperature": 0])
        _ = try server.curl("/v1/completions", ["-H", "Content-Type: application/json", "-d", String(decoding: body, as: UTF8.self)])
        let metrics = try WeakExpertSkippingEndToEndTests.metricsShowingMisses(server)
        #expect(server.stop() == 0)
        #expect(WeakExpertSkippingEndToEndTests.value("moe_low_bit_auto_slow_disk", in: metrics) == 0, "metrics: \(metrics)")
        #expect(WeakExpertSkippingEndToEndTests.value("moe_low_bit_auto_disk_bytes_per_second", in: metrics) == 0)
        #expect((WeakExpertSkippingEndToEndTests.value("moe_expert_cache_misses_total", in: metrics) ?? 0) > 0)
        #expect(WeakExpertSkippingEndToEndTests.value("moe_expert_low_bit_uses_total", in: metrics) ?? 0 == 0)
    }
}
