import Foundation
import Testing
import ModelFormats
import TensorMath
@testable import ExpertCache

/// Low-bit misses (issue 27 item 2, docs/LOSSY.md): the choice of copy as a pure state machine,
/// then the runtime cache serving a miss from a low-bit copy and promoting it to the full one.
@Suite struct LowBitMissTests {
    // MARK: LowBitPrecision, without I/O

    @Test func aResidentFullCopyAlwaysRuns() {
        var p = LowBitPrecision()
        let key = ExpertKey(layer: 0, expert: 3)
        p.tick(layer: 0)
        #expect(p.choose(key, full: .resident, lowBit: nil) == .full)
        #expect(p.choose(key, full: .resident, lowBit: .resident) == .full)
    }

    @Test func aMissRunsLowBitAndIsPromotedWhenItStaysInUse() {
        var p = LowBitPrecision(promoteAfter: 2, window: 3)
        let key = ExpertKey(layer: 1, expert: 7)
        p.tick(layer: 1)
        #expect(p.choose(key, full: nil, lowBit: nil) == .lowBit(promote: false))
        p.tick(layer: 1)
        // Used again within the window: promoted.
        #expect(p.choose(key, full: nil, lowBit: .resident) == .lowBit(promote: true))
        // Full copy on its way, low-bit copy at hand: no waiting.
        p.tick(layer: 1)
        #expect(p.choose(key, full: .loading, lowBit: .resident) == .lowBit(promote: false))
        // Full copy on its way and no low-bit copy: wait for the read already running.
        #expect(p.choose(key, full: .loading, lowBit: nil) == .full)
        // Full and resident: the run is over.
        #expect(p.choose(key, full: .resident, lowBit: .resident) == .full)
        #expect(p.uses(key) == 0)
    }

    @Test func usesFurtherApartThanTheWindowDoNotPromote() {
        var p = LowBitPrecision(promoteAfter: 2, window: 3)
        let key = ExpertKey(layer: 0, expert: 1)
        p.tick(layer: 0)
        #expect(p.choose(key, full: nil, lowBit: nil) == .lowBit(promote: false))
        for _ in 0..<4 { p.tick(layer: 0) }   // 4 calls later: outside the window of 3
        #expect(p.choose(key, full: nil, lowBit: nil) == .lowBit(promote: false))
        #expect(p.uses(key) == 1)
        // Other layers' calls do not age this layer's experts.
        for _ in 0..<10 { p.tick(layer: 5) }
        p.tick(layer: 0)
        #expect(p.choose(key, full: nil, lowBit: .resident) == .lowBit(promote: true))
    }

    @Test func promoteAfterOneIsHobbitStyle() {
        var p = LowBitPrecision(promoteAfter: 1)
        p.tick(layer: 0)
        #expect(p.choose(ExpertKey(layer: 0, expert: 0), full: nil, lowBit: nil) == .lowBit(promote: true))
    }

    // MARK: The runtime cache

    /// Full copies are 1×1 matrices holding `layer * 1000 + expert`, low-bit copies its negative;
    /// low-bit copies cost a quarter of the bytes.
    final class TwoCopyLoader: ExpertLoader, @unchecked Sendable {
        let lock = NSLock()
        var fullLoads: [ExpertKey] = []
        var lowBitLoads: [ExpertKey] = []
        let copies: Bool
        init(copies: Bool = true) { self.copies = copies }
        func expertByteCount(layer: Int, expert: Int) -> Int { 400 }
        func lowBitByteCount(layer: Int, expert: Int) -> Int? { copies ? 100 : nil }
        static func weights(_ value: Float) -> ExpertWeights {
            let m = WeightMatrix(rows: 1, cols: 1, values: [value])
            return ExpertWeights(gate: m, up: m, down: m)
        }
        func loadExpert(layer: Int, expert: Int) throws -> ExpertWeights {
            lock.withLock { fullLoads.append(ExpertKey(layer: layer, expert: expert)) }
            return Self.weights(Float(layer * 1000 + expert))
        }
        func loadLowBitExpert(layer: Int, expert: Int) throws -> ExpertWeights {
            lock.withLock { lowBitLoads.append(ExpertKey(layer: layer, expert: expert)) }
            return Self.weights(-Float(layer * 1000 + expert))
        }
    }

    static func values(_ cache: OffloadingExpertCache, layer: Int, experts: [Int]) throws -> [Int: Float] {
        var seen: [Int: Float] = [:]
        try cache.withExperts(layer: layer, experts: experts) { expert, weights in seen[expert] = weights.gate.row(0)[0] }
        return seen
    }

    static func waitUntil(_ condition: () -> Bool) {
        let deadline = Date().addingTimeInterval(10)
        while !condition() && Date() < deadline { Thread.sleep(forTimeInterval: 0.005) }
    }

    @Test func aMissIsServedLowBitThenPromotedToTheFullCopy() throws {
        let loader = TwoCopyLoader()
        let cache = try OffloadingExpertCache(loader: loader, policy: LRUPolicy(),
                                              configuration: .init(budgetBytes: 4000, floorSlots: 1, readerThreads: 2), layers: [0, 1])
        defer { cache.close() }
        try cache.enableLowBitMisses(share: 0.25, promoteAfter: 2, window: 8)
        // First use: the low-bit copy runs (its negative value), no full read.
        #expect(try Self.values(cache, layer: 1, experts: [5]) == [5: -1005])
        #expect(loader.lowBitLoads == [ExpertKey(layer: 1, expert: 5)] && loader.fullLoads.isEmpty)
        // Second use in a row: still low-bit (resident now, not read again), and the full copy is
        // read in the background at prefetch priority.
        #expect(try Self.values(cache, layer: 1, experts: [5]) == [5: -1005])
        Self.waitUntil { cache.isResident(layer: 1, expert: 5) }
        #expect(cache.isResident(layer: 1, expert: 5))
        #expect(loader.lowBitLoads.count == 1 && loader.fullLoads == [ExpertKey(layer: 1, expert: 5)])
        // Third use: the full copy, exact.
        #expect(try Self.values(cache, layer: 1, experts: [5]) == [5: 1005])
        let total = cache.statistics().total
        #expect(total.lowBitUses == 2 && total.lowBitPromotions == 1 && total.lowBitBytes == 100)
        #expect(total.hits == 1 && total.prefetchHits == 1)
        #expect(cache.pinCount() == 0)
    }

    @Test func exactIsTheDefaultAndCopiesAreRequired() throws {
        let loader = TwoCopyLoader()
        let cache = try OffloadingExpertCache(loader: loader, policy: LRUPolicy(),
                                              configuration: .init(budgetBytes: 4000, floorSlots: 1, readerThreads: 1), layers: [0])
        defer { cache.close() }
        #expect(try Self.values(cache, layer: 0, experts: [1, 2]) == [1: 1, 2: 2])
        #expect(loader.lowBitLoads.isEmpty && cache.statistics().total.lowBitUses == 0)

        let plain = try OffloadingExpertCache(loader: TwoCopyLoader(copies: false), policy: LRUPolicy(),
                                              configuration: .init(budgetBytes: 4000, floorSlots: 1, readerThreads: 1), layers: [0])
        defer { plain.close() }
        #expect(throws: ExpertCacheError.self) { try plain.enableLowBitMisses() }
    }

    /// Many experts at once through a pool that holds few copies: every call still gets every
    /// expert (low-bit or full), from several threads, and no pin is left behind.
    @Test func aSmallLowBitPoolServesLargeCallsWithoutLeaks() throws {
        let loader = TwoCopyLoader()
        let cache = try OffloadingExpertCache(loader: loader, policy: LFUPolicy(),
                                              configuration: .init(budgetBytes: 2400, floorSlots: 1, readerThreads: 2), layers: [0, 1])
        defer { cache.close() }
        try cache.enableLowBitMisses(share: 0.25)   // 600 bytes: six copies
        for step in 0..<20 {
            let layer = step % 2
            let experts = Array(0..<10).map { ($0 * 3 + step) % 16 }
            let seen = try Self.values(cache, layer: layer, experts: experts)
            #expect(Set(seen.keys) == Set(experts))
            for (expert, value) in seen { #expect(abs(value) == Float(layer * 1000 + expert)) }
        }
        #expect(cache.pinCount() == 0)
        let stats = cache.statistics()
        #expect(stats.usedBytes <= stats.budgetBytes)
        #expect(stats.total.lowBitUses > 0)
    }
}
