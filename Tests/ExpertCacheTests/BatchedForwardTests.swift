import Foundation
import ModelFormats
import MoEModels
import Testing
@testable import ExpertCache

/// Through the offloading cache under a budget of 6 of 16 experts, with a decode step's
/// experts spread over two workers, a sequence's logits are bit-identical whether it runs
/// alone or beside others: expert outputs are summed per token in routing order, whichever
/// thread ran which expert and whichever experts were resident.
@Suite struct BatchedForwardTests {
    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/models/qwen3moe-headdim")

    func makeModel() throws -> (TransformerModel, OffloadingExpertCache) {
        let checkpoint = try CheckpointDirectory(url: Self.fixture)
        let config = checkpoint.config
        let loader = try CheckpointExpertLoader(config: config, weights: checkpoint, names: .of(config.architecture))
        // Room for 6 of the 16 experts: every step evicts.
        let cache = try OffloadingExpertCache(
            loader: loader, policy: LRUPolicy(),
            configuration: .init(budgetBytes: 6 * loader.expertByteCount(layer: 0, expert: 0), floorSlots: config.expertsPerToken),
            layers: config.moeLayers)
        return (try TransformerModel(config: config, weights: checkpoint, experts: cache), cache)
    }

    @Test func decodeLogitsDoNotDependOnTheBatch() throws {
        let prompts = [[5, 9, 14, 2], [7, 7, 1], [30, 4, 11, 8, 3], [1, 2]]
        let steps = 4
        let (model, cache) = try makeModel()
        defer { cache.close() }
        // Each sequence alone: prefill, then `steps` decode steps of a fixed token.
        var alone: [[[Float]]] = []
        for prompt in prompts {
            let kv = model.makeCache()
            _ = try model.forward([SequenceInput(cache: kv, tokens: prompt)])
            alone.append(try (0..<steps).map { step in try model.forward([SequenceInput(cache: kv, tokens: [step + 3])])[0] })
        }
        // All together, in a fresh model (cold cache): the same prefills (one by one: a prompt's
        // rows are a GEMM whose numerics depend on the row count), then each decode step as one batch.
        let (batchedModel, batchedCache) = try makeModel()
        defer { batchedCache.close() }
        let caches = prompts.map { _ in batchedModel.makeCache() }
        for (kv, prompt) in zip(caches, prompts) { _ = try batchedModel.forward([SequenceInput(cache: kv, tokens: prompt)]) }
        for step in 0..<steps {
            let logits = try batchedModel.forward(caches.map { SequenceInput(cache: $0, tokens: [step + 3]) })
            for sequence in prompts.indices { #expect(logits[sequence] == alone[sequence][step], "sequence \(sequence), step \(step)") }
        }
        #expect(batchedCache.statistics().total.evictions > 0)   // the budget was tight
    }
}
