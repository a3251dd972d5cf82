import Foundation
import Testing
@testable import ExpertCache

/// `--memory-budget auto`'s state machine without I/O: readings in, budgets out; and the
/// cache's resize, which applies them.
@Suite struct MemoryBudgetControllerTests {
    static let gib = 1 << 30
    /// A 16 GiB machine: shrink below 0.8 GiB free, grow above 1.6 GiB, steps of 0.5 GiB.
    let settings = MemoryBudgetController.Settings(floorBytes: 1 * gib, ceilingBytes: 8 * gib, totalBytes: 16 * gib)

    @Test func growsStepByStepWhileMemoryIsFreeAndStopsAtTheCeiling() {
        var controller = MemoryBudgetController(settings: settings, initialBytes: 2 * Self.gib)
        var budgets: [Int] = []
        for _ in 0..<20 {
            if let budget = controller.update(.init(availableBytes: 10 * Self.gib)) { budgets.append(budget) }
        }
        #expect(budgets.first == 2 * Self.gib + settings.stepBytes)
        #expect(zip(budgets, budgets.dropFirst()).allSatisfy { $1 - $0 <= settings.stepBytes && $1 > $0 })
        #expect(controller.budgetBytes == 8 * Self.gib)
        #expect(controller.update(.init(availableBytes: 10 * Self.gib)) == nil)   // at the ceiling
    }

    @Test func growsNoFurtherThanWhatIsFreeAboveTheHighWatermark() {
        var controller = MemoryBudgetController(settings: settings, initialBytes: 2 * Self.gib)
        let available = settings.highWatermarkBytes + 100 << 20
        #expect(controller.update(.init(availableBytes: available)) == 2 * Self.gib + 100 << 20)
    }

    @Test func aShrinkCountsDownFromWhatTheCacheHoldsWhenItHasNotFilledItsBudget() {
        var controller = MemoryBudgetController(settings: settings, initialBytes: 6 * Self.gib)
        let short = settings.lowWatermarkBytes - 1
        // The cache holds 2 GiB of its 6: lowering the budget to 5 would free nothing.
        let budget = controller.update(.init(availableBytes: short), cacheUsedBytes: 2 * Self.gib)
        #expect(budget == 2 * Self.gib - (settings.highWatermarkBytes - short))
        // A full cache shrinks from its budget as before.
        var full = MemoryBudgetController(settings: settings, initialBytes: 6 * Self.gib)
        #expect(full.update(.init(availableBytes: short), cacheUsedBytes: 6 * Self.gib) == 6 * Self.gib - (settings.highWatermarkBytes - short))
    }

    @Test func holdsBetweenTheWatermarks() {
        var controller = MemoryBudgetController(settings: settings, initialBytes: 4 * Self.gib)
        let between = (settings.lowWatermarkBytes + settings.highWatermarkBytes) / 2
        for _ in 0..<5 { #expect(controller.update(.init(availableBytes: between)) == nil) }
        #expect(controller.lastDecision == .hold && controller.budgetBytes == 4 * Self.gib)
    }

    @Test func shrinksBelowTheLowWatermarkByWhatIsMissingButNotBelowTheFloor() {
        var controller = MemoryBudgetController(settings: settings, initialBytes: 6 * Self.gib)
        // 0.3 GiB free: 1.3 GiB short of the high watermark.
        let short = settings.highWatermarkBytes - 300 << 20
        #expect(controller.update(.init(availableBytes: 300 << 20)) == 6 * Self.gib - short)
        #expect(controller.lastDecision == .shrink)
        for _ in 0..<10 { controller.update(.init(availableBytes: 100 << 20)) }
        #expect(controller.budgetBytes == 1 * Self.gib)   // the plan's floor
    }

    @Test func pressureShrinksEvenWithFreeMemoryAndBlocksGrowth() {
        var controller = MemoryBudgetController(settings: settings, initialBytes: 4 * Self.gib)
        #expect(controller.update(.init(availableBytes: 10 * Self.gib, pressurePercent: 25)) == 4 * Self.gib - settings.stepBytes)
        // Some pressure, but below the shrink threshold: neither grow nor shrink.
        #expect(controller.update(.init(availableBytes: 10 * Self.gib, pressurePercent: 5)) == nil)
        #expect(controller.lastDecision == .hold)
        // Calm again: growth resumes.
        #expect(controller.update(.init(availableBytes: 10 * Self.gib, pressurePercent: 0.5)) == 4 * Self.gib)
    }

    @Test func parsesMeminfoAndPSI() {
        let meminfo = "MemTotal:       24560000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\nBuffers:  1 kB\n"
        #expect(MemoryReading.availableBytes(meminfo: meminfo) == 8_000_000 * 1024)
        #expect(MemoryReading.availableBytes(meminfo: "MemTotal: 1 kB\n") == nil)
        let psi = "some avg10=12.34 avg60=1.00 avg300=0.10 total=123\nfull avg10=3.00 avg60=0.00 avg300=0.00 total=1\n"
        #expect(MemoryReading.pressurePercent(psi: psi) == 12.34)
        #expect(MemoryReading.pressurePercent(psi: "") == nil)
        // This machine: a reading exists (PSI may not).
        #expect((MemoryReading.sample()?.availableBytes ?? 0) > 0)
    }

    @Test func theCacheShrinksByEvictingUnpinnedExpertsAndGrowsAgain() throws {
        let loader = FakeLoader()
        let cache = try OffloadingExpertCache(
            loader: loader, policy: LRUPolicy(),
            configuration: .init(budgetBytes: 6 * loader.bytesPerExpert, floorSlots: 1, readerThreads: 2), layers: [0])
        defer { cache.close() }
        try cache.withExperts(layer: 0, experts: [1, 2, 3, 4, 5, 6]) { _, _ in }
        #expect(cache.statistics().usedBytes == 6 * loader.bytesPerExpert)
        // Shrink while expert 6 is pinned (in use): four of the others go, by the policy.
        try cache.withExperts(layer: 0, experts: [6]) { _, _ in
            #expect(try! cache.resize(budgetBytes: 2 * loader.bytesPerExpert) == 4)
        }
        let shrunk = cache.statistics()
        #expect(shrunk.budgetBytes == 2 * loader.bytesPerExpert && shrunk.usedBytes <= shrunk.budgetBytes)
        #expect(cache.isResident(layer: 0, expert: 6) && (1...5).filter { cache.isResident(layer: 0, expert: $0) }.count == 1)
        #expect(loader.liveNow == 2)   // evicted buffers were released
        #expect(throws: ExpertCacheError.self) { try cache.resize(budgetBytes: 0) }
        // Grown again, it keeps more.
        try cache.resize(budgetBytes: 5 * loader.bytesPerExpert)
        try cache.withExperts(layer: 0, experts: [7, 8, 9]) { _, _ in }
        #expect(cache.statistics().residentExperts == 5)
        #expect(cache.pinCount() == 0)
    }
}
