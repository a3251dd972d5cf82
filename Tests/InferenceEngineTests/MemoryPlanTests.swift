import Testing
@testable import InferenceEngine

@Suite struct MemoryPlanTests {
    @Test func sizesParse() {
        #expect(parseByteSize("512MiB") == 512 << 20)
        #expect(parseByteSize("4GiB") == 4 << 30)
        #expect(parseByteSize("4G") == 4 << 30)
        #expect(parseByteSize("1.5GiB") == 3 << 29)
        #expect(parseByteSize("100KB") == 102_400)
        #expect(parseByteSize("12345") == 12345)
        #expect(parseByteSize("4 GiB") == 4 << 30)
        #expect(parseByteSize("lots") == nil)
        #expect(parseByteSize("4XB") == nil)
        #expect(parseByteSize("-1") == nil)
    }

    @Test func theExpertCacheGetsWhatRemains() throws {
        let plan = try MemoryPlan.plan(budget: 1000, denseBytes: 300, scratchBytes: 100, kvBytesPerToken: 1, kvTokens: 100,
                                       minimumExpertBytes: 200)
        #expect(plan.kvCacheBytes == 100)
        #expect(plan.expertCacheBytes == 500)
        #expect(plan.denseBytes + plan.scratchBytes + plan.kvCacheBytes + plan.expertCacheBytes == plan.budgetBytes)
    }

    @Test func theKVCacheIsCappedAtItsShare() throws {
        let plan = try MemoryPlan.plan(budget: 1000, denseBytes: 200, scratchBytes: 0, kvBytesPerToken: 10, kvTokens: 1000,
                                       minimumExpertBytes: 100, kvShare: 0.25)
        #expect(plan.kvCacheBytes == 200)
        #expect(plan.expertCacheBytes == 600)
    }

    @Test func aBudgetTooSmallFailsWithTheNumbers() {
        do {
            _ = try MemoryPlan.plan(budget: 1 << 20, denseBytes: 900 << 10, scratchBytes: 0, kvBytesPerToken: 0, kvTokens: 0,
                                    minimumExpertBytes: 200 << 10)
            Issue.record("planned an impossible budget")
        } catch {
            let message = "\(error)"
            #expect(message.contains("1.0 MiB") && message.contains("900.0 KiB") && message.contains("200.0 KiB"))
        }
    }
}

/// Issue 22: a q4 model serves at a budget of a quarter of its size.
@Suite struct QuarterBudgetPlanTests {
    /// The synthetic OLMoE-1B-7B shape (`moe-serve synth --shape olmoe-1b-7b`) packed with
    /// `--experts q4 --dense q4`: 16 layers, 64 experts of 3 × 1024 × 2048, top-8, hidden 2048,
    /// vocabulary 4,096, MHA 16 × 128, f16 KV cache. Sizes as the store lays them out.
    static let layers = 16, experts = 64, topK = 8, hidden = 2048, width = 1024, vocab = 4096
    static func q4Bytes(_ rows: Int, _ cols: Int) -> Int { rows * cols / 2 + rows * cols / 32 * 4 }
    static let expertBytes = 3 * q4Bytes(width, hidden)
    static let denseBytes = layers * 4 * q4Bytes(hidden, hidden) + 2 * q4Bytes(vocab, hidden) // attention, embeddings, LM head
        + layers * experts * hidden * 2 + (2 * layers + 1) * hidden * 4                        // bf16 routers, f32 norms
    static let modelBytes = layers * experts * expertBytes + denseBytes

    @Test func aQ4ModelPlansAtAQuarterOfItsSize() throws {
        // The process itself and scratch as the runtime measured them on this shape (RSS before
        // loading ≈ 60 MiB, forward workspace for 256 rows ≈ 40 MiB): generous figures.
        let runtime = 128 << 20, scratch = 96 << 20
        let minimum = MemoryPlan.minimumExpertBytes(expertBytes: Self.expertBytes, expertsPerToken: Self.topK, readsInFlight: Self.topK)
        let plan = try MemoryPlan.plan(budget: Self.modelBytes / 4, runtimeBytes: runtime, denseBytes: Self.denseBytes, scratchBytes: scratch,
                                       kvBytesPerToken: Self.layers * 2 * Self.hidden * 2, kvTokens: 4096, minimumExpertBytes: minimum)
        #expect(plan.expertCacheBytes >= minimum)
        #expect(plan.kvCacheBytes > 0)
        // Every layer's top-k does not fit at once at this budget: the floors shrink so that the
        // cache can be built, and never below zero.
        let floors = MemoryPlan.floorSlots(cacheBytes: plan.expertCacheBytes, expertBytes: Self.expertBytes, expertsPerToken: Self.topK, layers: Self.layers)
        #expect(floors >= 0 && floors <= Self.topK)
        #expect(floors * Self.layers * Self.expertBytes <= plan.expertCacheBytes)
        // The former minimum (two layers of experts, and top-k in every layer) refused this budget.
        let former = max(2 * Self.experts, Self.topK * Self.layers) * Self.expertBytes
        #expect(throws: MemoryPlanError.self) {
            _ = try MemoryPlan.plan(budget: Self.modelBytes / 4, runtimeBytes: runtime, denseBytes: Self.denseBytes, scratchBytes: scratch,
                                    kvBytesPerToken: Self.layers * 2 * Self.hidden * 2, kvTokens: 4096, minimumExpertBytes: former)
        }
    }

    @Test func floorsAreTopKWhenEveryLayerFits() {
        #expect(MemoryPlan.floorSlots(cacheBytes: 1000, expertBytes: 10, expertsPerToken: 8, layers: 4) == 8)
        #expect(MemoryPlan.floorSlots(cacheBytes: 100, expertBytes: 10, expertsPerToken: 8, layers: 4) == 2)
        #expect(MemoryPlan.floorSlots(cacheBytes: 30, expertBytes: 10, expertsPerToken: 8, layers: 4) == 0)
        #expect(MemoryPlan.minimumExpertBytes(expertBytes: 10, expertsPerToken: 8, readsInFlight: 8) == 160)
    }
}
