import ExpertCache
import Foundation
import InferenceEngine
import Runtime
import Testing

/// Readings a test sets, standing in for /proc.
private final class FakeMachine: @unchecked Sendable {
    private let lock = NSLock()
    private var reading = MemoryBudgetController.Reading(availableBytes: 0)
    func set(_ available: Int, pressure: Double = 0) {
        lock.lock(); reading = .init(availableBytes: available, pressurePercent: pressure); lock.unlock()
    }
    func read() -> MemoryBudgetController.Reading? { lock.lock(); defer { lock.unlock() }; return reading }
}

/// `--memory-budget auto` wired to a real runtime on the demo model, with the machine's
/// readings injected: the expert cache's budget and bytes follow them, and the monitor reports it.
@Suite(.serialized) struct AutoMemoryBudgetTests {
    @Test func theCacheFollowsFreeMemoryAndPressure() throws {
        var spec = RuntimeSpecification(model: RuntimeTests.demo)
        spec.memoryBudgetBytes = ProcessMemory.runtimeReservation() + (64 << 20)
        spec.expertCacheBytes = 6 << 20
        let runtime = try ModelRuntime.open(spec)
        defer { runtime.close() }
        let cache = try #require(runtime.cache)
        let all = try #require(runtime.allExpertBytes)
        let machine = FakeMachine()
        // A fixed budget is warmed (the demo's experts are too small to be mappings: none)...
        #expect(runtime.warmExpertBuffers()?.buffers == 0)
        // 32 MiB of "RAM": watermarks 1.6 and 3.2 MiB, steps of 1 MiB.
        let auto = try runtime.startAutoMemoryBudget(totalBytes: 32 << 20, readings: { machine.read() }, interval: nil)
        // ...an auto budget is not: it takes memory only as experts are read.
        #expect(runtime.warmExpertBuffers() == nil)
        let start = auto.expertCacheBudgetBytes
        #expect(start == min(6 << 20, all))

        // Free and calm: one step up per reading, up to every expert.
        machine.set(1 << 30)
        try auto.step()
        #expect(auto.expertCacheBudgetBytes == min(start + (1 << 20), all))
        #expect(cache.statistics().budgetBytes == auto.expertCacheBudgetBytes)

        // Fill the cache by generating, then shrink under pressure: unpinned experts go.
        _ = try RuntimeTests.generate(runtime, prompt: [1, 2, 3, 4], maxTokens: 6)
        // A shrink counts down from what the cache holds (at most its budget).
        let before = min(auto.expertCacheBudgetBytes, cache.statistics().usedBytes)
        machine.set(1 << 30, pressure: 40)
        try auto.step()
        #expect(auto.expertCacheBudgetBytes == max(before - (1 << 20), auto.settings.floorBytes))
        #expect(cache.statistics().usedBytes <= auto.expertCacheBudgetBytes)

        // Almost no free memory: down to the floor, never below.
        machine.set(0)
        for _ in 0..<16 { try auto.step() }
        #expect(auto.expertCacheBudgetBytes == cache.minimumBudgetBytes)
        #expect(cache.statistics().budgetBytes == cache.minimumBudgetBytes)
        #expect(cache.statistics().usedBytes <= cache.minimumBudgetBytes)

        // Between the watermarks: hold.
        machine.set(2 << 20)
        #expect(try auto.step() == nil)

        // The process budget the monitor reports is the fixed share plus the cache's.
        let engine = runtime.makeEngine(decode: { _ in "" })
        let snapshot = RuntimeMonitor(engine: engine, runtime: runtime).sample()
        #expect(snapshot.memoryBudgetBytes == auto.otherBytes + cache.minimumBudgetBytes)
        #expect(snapshot.cache?.budgetBytes == cache.minimumBudgetBytes)
        // Generation still works at the floor.
        #expect(try RuntimeTests.generate(runtime, prompt: [1, 2, 3, 4], maxTokens: 4).count == 4)
    }

    @Test func theSamplingThreadRunsUntilClose() throws {
        var spec = RuntimeSpecification(model: RuntimeTests.demo)
        spec.memoryBudgetBytes = ProcessMemory.runtimeReservation() + (64 << 20)
        spec.expertCacheBytes = 6 << 20
        let runtime = try ModelRuntime.open(spec)
        let machine = FakeMachine()
        machine.set(1 << 30)
        let auto = try runtime.startAutoMemoryBudget(totalBytes: 32 << 20, readings: { machine.read() }, interval: 0.01)
        let deadline = Date().addingTimeInterval(5)
        while auto.sampleCount < 3 && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        #expect(auto.sampleCount >= 3)
        #expect(auto.expertCacheBudgetBytes > 6 << 20 || auto.expertCacheBudgetBytes == runtime.allExpertBytes)
        runtime.close()
        Thread.sleep(forTimeInterval: 0.05)
        let after = auto.sampleCount
        Thread.sleep(forTimeInterval: 0.1)
        #expect(auto.sampleCount == after)
    }
}
