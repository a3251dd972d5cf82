import ExpertCache
import Foundation
import InferenceEngine
import ModelFormats
import MoEModels
import Runtime
import Testing

/// The runtime on Qwen3-Next under a budget: the plan's KV share wants every sequence's fixed
/// linear-attention state beside its positions, the engine reserves it per sequence, and an
/// offloading cache that evicts generates the tokens of the run with every expert in RAM.
@Suite(.serialized) struct HybridRuntimeTests {
    @Test func aHybridCheckpointUnderABudgetPlansItsStateAndGeneratesAsInRAM() throws {
        let url = RuntimeTests.fixture("qwen3next-hybrid-gqa")
        let prompt = Array((0..<70).map { ($0 * 11) % 97 })
        var spec = RuntimeSpecification(model: url)
        spec.kvPrecision = .f32
        spec.maxSequences = 2
        let inRAM = try ModelRuntime.open(spec)
        let reference = try RuntimeTests.generate(inRAM, prompt: prompt, maxTokens: 6)
        inRAM.close()

        let checkpoint = try CheckpointDirectory(url: url)
        let config = checkpoint.config
        let names = ArchitectureDescription.of(config.architecture)
        let loader = try CheckpointExpertLoader(config: config, weights: checkpoint, names: names)
        spec.memoryBudgetBytes = 1 << 30
        spec.contextTokens = 128
        spec.expertCacheBytes = config.moeLayers.count * config.expertsPerToken * loader.expertByteCount(layer: 0, expert: 0)
        spec.policy = .lru
        let runtime = try ModelRuntime.open(spec)
        defer { runtime.close() }
        let plan = try #require(runtime.plan)
        let state = TransformerModel.sequenceStateBytes(config)
        #expect(state > 0 && state == runtime.model.sequenceStateBytes)
        #expect(plan.kvCacheBytes == 2 * (128 * runtime.model.kvBytesPerToken + state))
        #expect(plan.runtimeBytes + plan.denseBytes + plan.scratchBytes + plan.kvCacheBytes + plan.expertCacheBytes == 1 << 30)
        #expect(try RuntimeTests.generate(runtime, prompt: prompt, maxTokens: 6) == reference)
        #expect((runtime.cache?.statistics().total.evictions ?? 0) > 0)
    }
}
