import Foundation
import Testing
import ModelFormats
import TensorMath
@testable import ExpertCache

/// Evicted experts' buffers go to the reads that replace them (`BufferPool`'s credit): a large
/// batch reserves a whole layer's misses at once, and before the credit all but the pool's few
/// fixed buffers were unmapped and the reads mapped (and the kernel zeroed) fresh ones.
@Suite struct BufferRecyclingTests {
    static let bufferBytes = 64 << 10

    /// A mapped 64 KiB buffer from `pool`, as an expert store's read makes one.
    static func buffer(_ pool: BufferPool) -> AlignedBuffer<UInt8> {
        AlignedBuffer<UInt8>(count: bufferBytes, alignment: 4096, zeroed: false, pool: pool)
    }

    @Test func creditLetsThePoolHoldBuffersForReadsNotYetStarted() {
        let pool = BufferPool(maxBytes: Self.bufferBytes)
        let b = Self.bufferBytes
        // Without credit the pool keeps one buffer.
        var buffers = (0..<3).map { _ in Self.buffer(pool) }
        buffers.removeAll()
        #expect(pool.heldBytes == b)
        // Three resident buffers (one from the pool); then two reads are expected, and the three
        // are evicted: the pool keeps its one plus the two the reads will want.
        buffers = (0..<3).map { _ in Self.buffer(pool) }
        #expect(pool.heldBytes == 0)
        pool.expectReads(bytes: 2 * b)
        #expect(pool.creditBytes == 2 * b)
        let evicted = Set(buffers.map { UInt(bitPattern: $0.pointer) })
        buffers.removeAll()
        #expect(pool.heldBytes == 3 * b)
        // The reads take evicted buffers and use up the credit; the fixed share stays.
        let reusedBefore = pool.reusedCount
        let taken = (0..<2).map { _ in Self.buffer(pool) }
        #expect(pool.reusedCount == reusedBefore + 2)
        #expect(taken.allSatisfy { evicted.contains(UInt(bitPattern: $0.pointer)) })
        #expect(pool.creditBytes == 0 && pool.heldBytes == b)
        // Beyond the credit nothing more is kept.
        var more = taken
        more.append(Self.buffer(pool))
        more.removeAll()
        #expect(pool.heldBytes == b)
        // Withdrawn reads lower the credit; with none expected the pool keeps its fixed share.
        pool.expectReads(bytes: 3 * b)
        pool.expectReads(bytes: -b)
        #expect(pool.creditBytes == 2 * b)
        more = (0..<3).map { _ in Self.buffer(pool) }   // each uses up credit, pooled or not
        #expect(pool.creditBytes == 0)
        pool.expectReads(bytes: 4 * b)
        more.removeAll()
        #expect(pool.heldBytes == 3 * b)
        pool.noReadsExpected()
        #expect(pool.creditBytes == 0 && pool.heldBytes == b)
        pool.expectReads(bytes: -10 * b)     // never below zero
        #expect(pool.creditBytes == 0)
    }

    /// Warmed buffers (session 33): the pool holds them beyond `maxBytes`, the next buffers made
    /// take them, each buffer taken (warmed or not) lowers the allowance, `noReadsExpected` keeps
    /// them, and `dropWarmed` unmaps the rest, telling the observer of each.
    @Test func warmedBuffersWaitInThePoolForTheReadsThatTakeThem() {
        let b = Self.bufferBytes
        let pool = BufferPool(maxBytes: b)
        let unmapped = UnmapLog()
        pool.unmapObserver = { pointer, _ in unmapped.append(pointer) }
        let warmed = (0..<4).map { _ -> UnsafeMutableRawPointer in
            let p = BufferPool.mapFresh(bytes: b)!
            BufferPool.populate(p, bytes: b)
            #expect(p.load(fromByteOffset: b - 1, as: UInt8.self) == 0)
            pool.addWarmed(p, bytes: b)
            return p
        }
        #expect(pool.heldBytes == 4 * b && pool.warmBytes == 4 * b)
        pool.noReadsExpected()
        #expect(pool.heldBytes == 4 * b, "no reads expected still keeps the warmed buffers")
        // Two reads take two of them.
        var taken = (0..<2).map { _ in Self.buffer(pool) }
        #expect(taken.allSatisfy { warmed.contains(UnsafeMutableRawPointer($0.pointer)) })
        #expect(pool.reusedCount == 2 && pool.heldBytes == 2 * b && pool.warmBytes == 2 * b)
        // Evicted, a taken buffer comes back within the allowance; taking it again lowers the allowance.
        taken.removeLast()
        #expect(pool.heldBytes == 3 * b)
        taken.append(Self.buffer(pool))
        #expect(pool.warmBytes == b && pool.heldBytes == 2 * b)
        // The budget shrank: the pool gives up what is beyond `maxBytes`, and says so before each unmapping.
        pool.dropWarmed()
        #expect(pool.warmBytes == 0 && pool.heldBytes == b)
        #expect(unmapped.count == 1)
        // Buffers in use are untouched; released now (two), only `maxBytes` is kept.
        taken.removeAll()
        #expect(pool.heldBytes == b && unmapped.count == 3)
    }

    final class UnmapLog: @unchecked Sendable {
        private let lock = NSLock()
        private var pointers: [UnsafeMutableRawPointer] = []
        func append(_ p: UnsafeMutableRawPointer) { lock.withLock { pointers.append(p) } }
        var count: Int { lock.withLock { pointers.count } }
    }

    /// Experts whose weights own a 64 KiB buffer from a pool (its address in `addresses`).
    final class PooledLoader: ExpertLoader, @unchecked Sendable {
        let pool = BufferPool(maxBytes: BufferRecyclingTests.bufferBytes)
        let forwardsCredit: Bool
        let lock = NSLock()
        var addresses: [ExpertKey: UInt] = [:]
        init(forwardsCredit: Bool) { self.forwardsCredit = forwardsCredit }
        func expertByteCount(layer: Int, expert: Int) -> Int { BufferRecyclingTests.bufferBytes }
        func loadExpert(layer: Int, expert: Int) throws -> ExpertWeights {
            let buffer = BufferRecyclingTests.buffer(pool)
            lock.withLock { addresses[ExpertKey(layer: layer, expert: expert)] = UInt(bitPattern: buffer.pointer) }
            let m = WeightMatrix(rows: 1, cols: 1, values: [Float(layer * 1000 + expert)])
            let p = UnsafeRawPointer(buffer.pointer).assumingMemoryBound(to: Float.self)
            // The biases keep the buffer alive as long as the weights (a store's matrices do the same).
            return ExpertWeights(gate: m, up: m, down: m, biases: ExpertBiases(gate: p, up: p, down: p, width: 1, hidden: 1, owner: buffer))
        }
        func expectReads(bytes: Int) { if forwardsCredit { pool.expectReads(bytes: bytes) } }
        func noReadsExpected() { if forwardsCredit { pool.noReadsExpected() } }
        func warmBuffers(limit: Int, shouldWarm: (Int) -> Bool) -> Int {
            var warmed = 0
            while warmed < limit, shouldWarm(pool.warmBytes) {
                pool.addWarmed(BufferPool.mapFresh(bytes: BufferRecyclingTests.bufferBytes)!, bytes: BufferRecyclingTests.bufferBytes)
                warmed += 1
            }
            return warmed
        }
        func dropWarmBuffers() { pool.dropWarmed() }
    }

    /// The cache warms into the room its budget has (less what it holds and what is warmed), or
    /// every expert's bytes when that is less; its reads take the warmed buffers; a smaller
    /// budget gives them up; a closed cache warms nothing.
    @Test func theCacheWarmsBuffersIntoTheRoomItsBudgetHas() throws {
        let b = Self.bufferBytes
        let loader = PooledLoader(forwardsCredit: true)
        let cache = try OffloadingExpertCache(loader: loader, policy: LRUPolicy(),
                                              configuration: .init(budgetBytes: 8 * b, floorSlots: 1, readerThreads: 2),
                                              layers: [0, 1])
        #expect(cache.warmBuffers(everyExpertBytes: 64 * b) == 8)
        #expect(loader.pool.warmBytes == 8 * b)
        try cache.withExperts(layer: 0, experts: [0, 1, 2]) { _, _ in }
        #expect(loader.pool.reusedCount == 3 && loader.pool.warmBytes == 5 * b)
        #expect(cache.warmBuffers(everyExpertBytes: 64 * b) == 0, "three held and five warmed fill the budget")
        #expect(cache.warmBuffers(everyExpertBytes: 64 * b) { true } == 0)
        try cache.resize(budgetBytes: 4 * b)
        #expect(loader.pool.warmBytes == 0 && loader.pool.heldBytes <= loader.pool.maxBytes)
        // Growing again leaves room to warm; a model of five experts in all caps it.
        try cache.resize(budgetBytes: 8 * b)
        #expect(cache.warmBuffers(everyExpertBytes: 5 * b) == 2)
        cache.close()
        #expect(cache.warmBuffers(everyExpertBytes: 64 * b) == 0)
    }

    /// Eight experts fill the cache; the next layer's eight misses, reserved together, evict
    /// them. With the credit the reads get the evicted buffers back from the pool; without, only
    /// the pool's fixed one, and one more once a read has finished and freed room. (Addresses
    /// cannot tell these apart: the kernel hands an unmapped range straight back to the next
    /// mapping of its size, zeroing its pages again.) With room made when each read starts (the
    /// default), each read evicts just before it takes a buffer, so it gets the evicted one back
    /// even without the credit.
    @Test(arguments: [(credit: true, roomAtRead: false), (false, false), (false, true)])
    func aLayersMissesReuseTheBuffersTheyEvicted(credit: Bool, roomAtRead: Bool) throws {
        let loader = PooledLoader(forwardsCredit: credit)
        let cache = try OffloadingExpertCache(loader: loader, policy: LRUPolicy(),
                                              configuration: .init(budgetBytes: 8 * Self.bufferBytes, floorSlots: 1, readerThreads: 2,
                                                                   roomAtRead: roomAtRead),
                                              layers: [0, 1])
        defer { cache.close() }
        let experts = Array(0..<8)
        try cache.withExperts(layer: 0, experts: experts) { _, _ in }
        #expect(loader.pool.reusedCount == 0)
        var seen: [Int: Float] = [:]
        try cache.withExperts(layer: 1, experts: experts) { expert, weights in seen[expert] = weights.gate.row(0)[0] }
        #expect(seen == Dictionary(uniqueKeysWithValues: experts.map { ($0, Float(1000 + $0)) }))
        let reused = loader.pool.reusedCount
        // The floor keeps one of layer 0's experts, so seven misses are reserved at once; the
        // eighth waits for room that one of this layer's own finished experts frees, whose
        // buffer a worker may still hold then.
        if credit || roomAtRead { #expect(reused >= 7, "reused \(reused) of 8") } else { #expect(reused <= 2, "reused \(reused) of 8") }
        #expect(loader.pool.heldBytes <= Self.bufferBytes)
        #expect(loader.pool.creditBytes == 0)
    }
}
