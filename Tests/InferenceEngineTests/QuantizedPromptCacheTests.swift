import Foundation
import Testing
import ModelFormats
import MoEModels
@testable import InferenceEngine

/// Partial prompt-cache hits on a packed store with quantised weights: q4 (or int8) experts and
/// `--dense q8` run the integer-dot kernels, whose per-row arithmetic does not depend on how many
/// rows share a step, so the engine's probe must find the prefill exact and a growing chat must
/// reuse the last turn and still equal a cold engine bit for bit (docs/HTTP.md, "Prompt caching").
@Suite(.serialized) struct QuantizedPromptCacheTests {
    static func packedEngine(_ fixture: String, experts: ExpertDType, dense: DenseEncoding, in directory: URL) throws -> Engine {
        let source = Fixtures.named(fixture)
        let checkpoint = try CheckpointDirectory(url: source)
        let names = ArchitectureDescription.of(checkpoint.config.architecture)
        var packer = ExpertStorePacker()
        packer.dtype = experts
        packer.dense = dense
        let store = directory.appendingPathComponent("store-\(experts.rawValue)-\(dense.rawValue)")
        if !FileManager.default.fileExists(atPath: store.path) {
            _ = try packer.pack(checkpoint: checkpoint, expertTensorNames: { layer, expert in
                let n = names.expertTensorNames(layer, expert)
                return [n.gate, n.up, n.down]
            }, to: store)
        }
        // The store really holds what the test is about: quantised experts and attention projections.
        let manifest = try ExpertStore(url: store).manifest
        #expect(manifest.experts.dtype == experts)
        #expect(manifest.dense.tensors.contains { $0.quantized != nil && $0.name.hasSuffix("self_attn.q_proj.weight") })
        let model = try ModelLoader.load(at: store)
        let engine = Engine(model: model, limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: 64 << 20), decode: toyDecode)
        engine.partialPromptReuse = .whenExact
        engine.start()
        return engine
    }

    @Test(arguments: [(ExpertDType.q4, DenseEncoding.q8), (.int8, .q8)])
    func aGrowingConversationOnQuantisedWeightsReusesTheLastTurnBitForBit(experts: ExpertDType, dense: DenseEncoding) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("quantised-prompt-cache-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try QuantizedPromptCacheTests.expectGrowingConversationReusesTheLastTurn {
            try Self.packedEngine("qwen2moe-shared", experts: experts, dense: dense, in: directory)
        }
    }
}

extension QuantizedPromptCacheTests {
    /// A growing chat on engines from `make`: turn 1 (70 tokens and a 12-token reply), then turn 2
    /// (turn 1, its reply and 30 new tokens) on the same engine must reuse all of turn 1 but its last
    /// sampled token (`whenExact`: the probe must find the prefill exact) and equal a cold engine's
    /// run of turn 2 bit for bit.
    static func expectGrowingConversationReusesTheLastTurn(_ make: () throws -> Engine) throws {
        let turn1 = (0..<70).map { ($0 * 13 + 5) % 97 }
        let engine = try make()
        defer { engine.shutdown(grace: 1) }
        let reply = try PromptCacheTests.run(engine, PromptCacheTests.sampled(turn1, maxTokens: 12, seed: 11))
        #expect(reply.tokens.count == 12)
        let turn2 = turn1 + reply.tokens + (0..<30).map { ($0 * 3 + 1) % 97 }
        let cold = try make()
        let reference = try PromptCacheTests.run(cold, PromptCacheTests.sampled(turn2, maxTokens: 8, seed: 5))
        cold.shutdown(grace: 1)
        let cached = try PromptCacheTests.run(engine, PromptCacheTests.sampled(turn2, maxTokens: 8, seed: 5))
        #expect(engine.exactPrefill == true)
        #expect(cached.usage?.cachedTokens == turn1.count + reply.tokens.count - 1)
        #expect(cached.tokens == reference.tokens)
        #expect(cached.logprobs.map(\.bitPattern) == reference.logprobs.map(\.bitPattern))
    }
}
