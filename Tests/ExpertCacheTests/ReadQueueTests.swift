import Testing
@testable import ExpertCache

private func key(_ e: Int) -> ExpertKey { ExpertKey(layer: 0, expert: e) }

@Suite struct ReadQueueTests {
    @Test func demandBeforePrefetchFIFOWithin() {
        var queue = ReadQueue(maxInFlightBytes: 1000)
        queue.enqueue(key(1), bytes: 10, priority: .prefetch)
        queue.enqueue(key(2), bytes: 10, priority: .demand)
        queue.enqueue(key(3), bytes: 10, priority: .prefetch)
        queue.enqueue(key(4), bytes: 10, priority: .demand)
        let order = (0..<4).compactMap { _ in queue.nextJob() }
        #expect(order.map(\.key) == [key(2), key(4), key(1), key(3)])
        #expect(order.map(\.priority) == [.demand, .demand, .prefetch, .prefetch])
        let r1 = queue.nextJob()
        #expect(r1 == nil && queue.inFlightBytes == 40)
    }

    /// A read its cache cannot make room for yet stays first in line, and nothing behind it
    /// (not even a prefetch, which would take the room) starts meanwhile.
    @Test func aReadRefusedToStartStaysFirstAndHoldsTheRest() {
        var queue = ReadQueue(maxInFlightBytes: 1000)
        queue.enqueue(key(1), bytes: 10, priority: .demand)
        queue.enqueue(key(2), bytes: 10, priority: .demand)
        queue.enqueue(key(3), bytes: 10, priority: .prefetch)
        var asked: [ExpertKey] = []
        let refused = queue.nextJob { asked.append($0.key); return false }
        #expect(refused == nil && asked == [key(1)])
        #expect(queue.queuedCount == 3 && queue.inFlightBytes == 0 && !queue.isStarted(key(1)))
        let order = (0..<3).compactMap { _ in queue.nextJob { _ in true } }
        #expect(order.map(\.key) == [key(1), key(2), key(3)] && queue.inFlightBytes == 30)
    }

    @Test func promotionAndCancellation() {
        var queue = ReadQueue(maxInFlightBytes: 1000)
        queue.enqueue(key(1), bytes: 10, priority: .prefetch)
        queue.enqueue(key(2), bytes: 10, priority: .prefetch)
        queue.enqueue(key(3), bytes: 10, priority: .demand)
        let r2 = queue.promote(key(2))
        #expect(r2)
        let r3 = queue.promote(key(3))
        #expect(!r3)          // already demand
        let r4 = queue.cancel(key(1))
        #expect(r4)
        #expect(queue.queuedPrefetches.isEmpty)
        let first = queue.nextJob()!, second = queue.nextJob()!
        #expect([first.key, second.key] == [key(3), key(2)] && second.priority == .demand)
        let r5 = queue.nextJob()
        #expect(r5 == nil)           // the cancelled one never runs
        let r6 = queue.cancel(key(2))
        #expect(!r6)            // started: too late
        let r7 = queue.promote(key(2))
        #expect(!r7)
        queue.finish(first)
        queue.finish(second)
        #expect(queue.inFlightBytes == 0)
        queue.enqueue(key(1), bytes: 10, priority: .prefetch)   // re-queued after cancel
        let r8 = queue.nextJob()
        #expect(r8?.key == key(1))
    }

    @Test func boundsBytesInFlight() {
        var queue = ReadQueue(maxInFlightBytes: 250)
        for e in 0..<4 { queue.enqueue(key(e), bytes: 100, priority: .demand) }
        let a = queue.nextJob()!, b = queue.nextJob()!
        let r9 = queue.nextJob()
        #expect(r9 == nil && queue.inFlightBytes == 200)
        queue.finish(a)
        let r10 = queue.nextJob()
        #expect(r10?.key == key(2))
        queue.finish(b)
        // A single read larger than the bound still starts when nothing is in flight.
        var big = ReadQueue(maxInFlightBytes: 50)
        big.enqueue(key(9), bytes: 100, priority: .demand)
        let r11 = big.nextJob()
        #expect(r11 != nil)
    }

    /// With one prefetch slot a second prefetch waits for the first to finish, while demands
    /// (queued before or after) still start; a prefetch promoted while queued no longer counts
    /// against the slot.
    @Test func boundsPrefetchReadsInFlightButNotDemands() {
        var queue = ReadQueue(maxInFlightBytes: 1000, maxInFlightPrefetches: 1)
        queue.enqueue(key(1), bytes: 10, priority: .prefetch)
        queue.enqueue(key(2), bytes: 10, priority: .prefetch)
        queue.enqueue(key(3), bytes: 10, priority: .prefetch)
        let first = queue.nextJob()!
        #expect(first.key == key(1) && queue.inFlightPrefetches == 1)
        let blocked = queue.nextJob()
        #expect(blocked == nil)                       // key 2 waits for the slot
        queue.enqueue(key(4), bytes: 10, priority: .demand)
        let demand = queue.nextJob()
        #expect(demand?.key == key(4) && demand?.priority == .demand)
        let wasQueuedPrefetch = queue.promote(key(3))
        #expect(wasQueuedPrefetch)
        let promoted = queue.nextJob()
        #expect(promoted?.key == key(3) && promoted?.priority == .demand && queue.inFlightPrefetches == 1)
        queue.finish(first)
        #expect(queue.inFlightPrefetches == 0)
        let second = queue.nextJob()
        #expect(second?.key == key(2) && second?.priority == .prefetch)
        queue.finish(demand!)
        queue.finish(promoted!)
        queue.finish(second!)
        #expect(queue.inFlightPrefetches == 0 && queue.inFlightBytes == 0)
    }
}
