import Foundation
import Testing

/// `pack --dense q8|q4` on the trained demo model (exported, repacked with q4 experts): the
/// store is smaller and its perplexity on the held-out fixture text stays close to
/// transformers' figure for the original (measured 2026-12-04: bf16 27.73, q8 27.71, q4 28.38
/// against 27.73).
@Suite(.serialized) struct DenseQuantizationEndToEndTests {
    @Test func quantisedDenseWeightsKeepThePerplexity() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let reference = try JSONDecoder().decode(PerplexityEndToEndTests.Reference.self,
                                                 from: Data(contentsOf: PerplexityEndToEndTests.fixtures.appendingPathComponent("reference.json")))
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dense-e2e-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let hf = directory.appendingPathComponent("hf").path
        let exported = try MemoryBudgetEndToEndTests.run(["export", root.appendingPathComponent("DemoModel").path, "--out", hf])
        try #require(exported.status == 0, "export failed: \(exported.stderr)")
        var denseBytes: [String: Int] = [:]
        for (dense, tolerance) in [("bf16", 0.01), ("q8", 0.01), ("q4", 0.05)] {
            let store = directory.appendingPathComponent("store-\(dense)").path
            let packed = try MemoryBudgetEndToEndTests.run(["pack", hf, store, "--experts", "q4", "--dense", dense])
            try #require(packed.status == 0, "pack --dense \(dense) failed: \(packed.stderr)")
            denseBytes[dense] = (try FileManager.default.attributesOfItem(atPath: store + "/dense.bin")[.size] as? Int) ?? 0
            let output = try PerplexityEndToEndTests.perplexity(["--model", store, "--context", String(reference.context), "--scoring", reference.scoring])
            #expect(abs(output.perplexity / reference.perplexity - 1) < tolerance,
                    "dense \(dense): \(output.perplexity) vs transformers \(reference.perplexity)")
        }
        #expect(denseBytes["q8"]! < denseBytes["bf16"]! * 6 / 10)
        #expect(denseBytes["q4"]! < denseBytes["q8"]! * 7 / 10)
        let invalid = try MemoryBudgetEndToEndTests.run(["pack", hf, directory.appendingPathComponent("x").path, "--dense", "q3"])
        #expect(invalid.status != 0)
    }
}
