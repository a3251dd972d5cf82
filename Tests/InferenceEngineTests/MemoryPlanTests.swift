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
