import Foundation
import Testing
import ModelFormats
import TensorMath
@testable import ExpertCache

/// `--low-bit-misses auto` (issue 27, docs/LOSSY.md): the pure rule that picks exact with
/// prefetch or the slow-disk setting, and the cache pieces it drives.
@Suite struct LowBitAutoTests {
    @Test func aSlowDiskAgainstFastComputeChoosesTheSlowDiskSetting() {
        // 200 MB/s against 24 GB/s of expert compute (as measured here): a read takes 120x a compute.
        let d = LowBitAuto.decide(diskBytesPerSecond: 200e6, computeBytesPerSecond: 24e9, hasLowBitCopies: true)
        #expect(d.mode == .slowDisk)
        #expect(d.readToComputeRatio == 120)
    }

    @Test func aFastDiskStaysExact() {
        // 1.4 GB/s against 24 GB/s: ~17x, below the threshold.
        let d = LowBitAuto.decide(diskBytesPerSecond: 1.4e9, computeBytesPerSecond: 24e9, hasLowBitCopies: true)
        #expect(d.mode == .exact)
        #expect(d.reason.contains("< 40"))
    }

    @Test func theThresholdIsInclusiveAndScalesWithCompute() {
        #expect(LowBitAuto.decide(diskBytesPerSecond: 100e6, computeBytesPerSecond: 4e9, hasLowBitCopies: true).mode == .slowDisk)
        #expect(LowBitAuto.decide(diskBytesPerSecond: 100e6, computeBytesPerSecond: 3.99e9, hasLowBitCopies: true).mode == .exact)
        // The same disk is "slow" only relative to compute: a slower CPU keeps it exact.
        #expect(LowBitAuto.decide(diskBytesPerSecond: 200e6, computeBytesPerSecond: 2e9, hasLowBitCopies: true).mode == .exact)
        #expect(LowBitAuto.decide(diskBytesPerSecond: 200e6, computeBytesPerSecond: 2e9, hasLowBitCopies: true, threshold: 5).mode == .slowDisk)
    }

    @Test func autoNeverTurnsLossyWithoutCopiesOrMeasurements() {
        #expect(LowBitAuto.decide(diskBytesPerSecond: 1e6, computeBytesPerSecond: 8e9, hasLowBitCopies: false).mode == .exact)
        let unmeasured = LowBitAuto.decide(diskBytesPerSecond: nil, computeBytesPerSecond: 8e9, hasLowBitCopies: true)
        #expect(unmeasured.mode == .exact && unmeasured.reason.contains("no bandwidth"))
        #expect(LowBitAuto.decide(diskBytesPerSecond: 1e6, computeBytesPerSecond: nil, hasLowBitCopies: true).mode == .exact)
        #expect(LowBitAuto.decide(diskBytesPerSecond: 0, computeBytesPerSecond: 8e9, hasLowBitCopies: true).mode == .exact)
    }

    @Test func disabledPrefetchesQueueNothingAndComputeRateIsMeasured() throws {
        let loader = LowBitMissTests.TwoCopyLoader()
        let cache = try OffloadingExpertCache(loader: loader, policy: LRUPolicy(),
                                              configuration: .init(budgetBytes: 4000, floorSlots: 1, readerThreads: 1), layers: [0, 1])
        defer { cache.close() }
        #expect(cache.hasLowBitCopies && cache.moeLayers == [0, 1])
        cache.disablePrefetches()
        cache.prefetch(layer: 1, experts: [2, 3], pipeline: false)
        #expect(cache.statistics().total.prefetchesIssued == 0 && loader.fullLoads.isEmpty)
        // Expert 0 of layer 0 is read (one miss) and multiplied; its rate is positive.
        let rate = try #require(try cache.measureExpertComputeRate(seconds: 0.005))
        #expect(rate > 0)
        #expect(loader.fullLoads == [ExpertKey(layer: 0, expert: 0)])
        let plain = try OffloadingExpertCache(loader: LowBitMissTests.TwoCopyLoader(copies: false), policy: LRUPolicy(),
                                              configuration: .init(budgetBytes: 4000, floorSlots: 1, readerThreads: 1), layers: [0])
        defer { plain.close() }
        #expect(!plain.hasLowBitCopies)
    }
}
