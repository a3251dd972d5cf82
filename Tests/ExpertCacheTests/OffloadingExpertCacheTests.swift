import Foundation
import ModelFormats
@testable import MoEModels
import Testing
@testable import ExpertCache
import TensorMath

private func makeCache(_ loader: FakeLoader, experts: Int, floor: Int = 1, layers: [Int] = [0], readers: Int = 4,
                       policy: any CachePolicy = LRUPolicy(), roomAtRead: Bool? = nil) throws -> OffloadingExpertCache {
    try OffloadingExpertCache(
        loader: loader, policy: policy,
        configuration: .init(budgetBytes: experts * loader.bytesPerExpert, floorSlots: floor, readerThreads: readers, roomAtRead: roomAtRead),
        layers: layers)
}

/// Runs `withExperts` and returns the experts in the order `body` saw them.
@discardableResult
private func request(_ cache: OffloadingExpertCache, _ layer: Int, _ experts: [Int]) throws -> [Int] {
    var seen: [Int] = []
    try cache.withExperts(layer: layer, experts: experts) { expert, weights in
        #expect(weights.fakeIdentity == layer * 1000 + expert)
        seen.append(expert)
    }
    return seen
}

@Suite(.serialized) struct OffloadingExpertCacheTests {
    @Test func hitsMissesEvictionsAndStats() throws {
        let loader = FakeLoader()
        let cache = try makeCache(loader, experts: 2)
        defer { cache.close() }
        #expect(try request(cache, 0, [1, 2, 1]).sorted() == [1, 2])     // repeats run once
        #expect(try request(cache, 0, [2, 1]) == [2, 1])
        try request(cache, 0, [3])                                         // 2 is least recent
        #expect(!cache.isResident(layer: 0, expert: 2) && cache.isResident(layer: 0, expert: 1))
        #expect(loader.loads(0, 1) == 1 && loader.loads(0, 2) == 1)
        let stats = cache.statistics()
        #expect(stats.total.hits == 2 && stats.total.misses == 3 && stats.total.evictions == 1)
        #expect(stats.total.demandBytes == 300 && stats.perLayer[0]?.misses == 3)
        #expect(stats.usedBytes == 200 && stats.peakUsedBytes == 200 && stats.residentExperts == 2)
    }

    @Test func residentExpertsRunFirst() throws {
        let loader = FakeLoader()
        let cache = try makeCache(loader, experts: 4)
        defer { cache.close() }
        try request(cache, 0, [1])
        #expect(try request(cache, 0, [5, 6, 1]).first == 1)
    }

    @Test func residentsRunWhileMissesLoad() throws {
        let loader = FakeLoader()
        let cache = try makeCache(loader, experts: 4)
        defer { cache.close() }
        try request(cache, 0, [1])
        loader.block(ExpertKey(layer: 0, expert: 5))
        let seen = Counter()
        let done = DispatchSemaphore(value: 0)
        Thread {
            try? cache.withExperts(layer: 0, experts: [5, 1]) { expert, _ in seen.add("\(expert)") }
            done.signal()
        }.start()
        eventually("the resident expert ran") { seen.values == ["1"] }
        // The reader thread may take the blocked read up only after the resident expert ran.
        eventually("the read of the missing expert started") { loader.loads(0, 5) == 1 }
        #expect(!cache.isResident(layer: 0, expert: 5))
        loader.open()
        done.wait()
        #expect(seen.values == ["1", "5"])
    }

    /// `residentsRan` (where the model runs the next layer's shadow) comes once, from worker 0,
    /// after every resident expert has run, with those experts, while a read still runs; with two
    /// workers worker 0 waits for the other's resident expert first.
    @Test(arguments: [1, 2]) func residentsRanReportsTheResidentsWhileAReadStillRuns(workers: Int) throws {
        let loader = FakeLoader()
        let cache = try makeCache(loader, experts: 4)
        defer { cache.close() }
        try request(cache, 0, [1, 2])
        loader.block(ExpertKey(layer: 0, expert: 5))
        let seen = Counter()
        var reports: [[Int]] = []
        try cache.withExperts(layer: 0, experts: [5, 1, 2], workers: workers, pinned: {}, residentsRan: { completed in
            #expect(!cache.isResident(layer: 0, expert: 5), "the read is still running")
            reports.append(completed.sorted())
            seen.add("report")
            loader.open()
        }) { _, expert, _ in seen.add("\(expert)") }
        #expect(reports == [[1, 2]])
        #expect(Set(seen.values.prefix(2)) == ["1", "2"] && Array(seen.values.dropFirst(2)) == ["report", "5"])

        // Every expert resident: nothing to report.
        var again = 0
        try cache.withExperts(layer: 0, experts: [1, 2, 5], workers: workers, pinned: {}, residentsRan: { _ in again += 1 }) { _, _, _ in }
        #expect(again == 0)
    }

    /// Once every missing expert has arrived there is no wait left to fill: no report.
    @Test func residentsRanIsNotCalledOnceTheReadsHaveArrived() throws {
        let loader = FakeLoader()
        let cache = try makeCache(loader, experts: 4)
        defer { cache.close() }
        try request(cache, 0, [1])
        var reports = 0
        try cache.withExperts(layer: 0, experts: [5, 1], workers: 1, pinned: {}, residentsRan: { _ in reports += 1 }) { _, expert, _ in
            // While the resident expert runs, the read of 5 finishes.
            if expert == 1 { eventually("the read of 5 finished") { cache.isResident(layer: 0, expert: 5) } }
        }
        #expect(reports == 0)
    }

    @Test func readsInFlightQuietTheCorePairHelperAndAreTimed() throws {
        let loader = FakeLoader()
        let cache = try makeCache(loader, experts: 4)
        defer { cache.close() }
        loader.block(ExpertKey(layer: 0, expert: 5))
        let done = DispatchSemaphore(value: 0)
        Thread {
            try? cache.withExperts(layer: 0, experts: [5]) { _, _ in }
            done.signal()
        }.start()
        eventually("the read started") { loader.loads(0, 5) == 1 }
        // While the read runs the helper must not spin on the core its completion needs.
        #expect(CorePair.quietCount >= 1)
        Thread.sleep(forTimeInterval: 0.02)
        loader.open()
        done.wait()
        let stats = cache.statistics()
        // The read ran ≥ 20 ms: it is timed, and the disk counted busy for as long.
        #expect(stats.total.readSeconds >= 0.02 && (stats.ioBusySeconds ?? 0) >= 0.02)
        #expect((stats.ioBusySeconds ?? 0) <= stats.total.readSeconds + 1e-3)
        #expect(stats.total.demandQueuedSeconds >= 0)
        // CorePair still runs both halves while quiet.
        CorePair.quiet(1)
        defer { CorePair.quiet(-1) }
        let halves = Counter()
        CorePair.run { halves.add("\($0)") }
        #expect(halves.values.sorted() == ["0", "1"])
    }

    @Test func allMissesOfALayerAreReadAtOnce() throws {
        let loader = FakeLoader()
        loader.latency = 0.05...0.05
        let cache = try makeCache(loader, experts: 8, readers: 4)
        defer { cache.close() }
        try request(cache, 0, [1, 2, 3, 4])
        #expect(loader.peakConcurrentReads == 4)
        // Time blocked on reads is counted as stall (a lower bound; not a benchmark).
        #expect(cache.statistics().total.stallSeconds >= 0.04)
    }

    /// A window of 2 keeps at most two of a call's misses reserved at once (so at most two
    /// reads in flight for it, with 4 readers), runs every expert once, and leaves the other
    /// layer's residents alone where reserving all six misses at once evicts them.
    @Test func anAdmissionWindowBoundsTheMissesReservedAtOnce() throws {
        for window in [2, nil] as [Int?] {
            let loader = FakeLoader()
            loader.latency = 0.01...0.01
            let cache = try OffloadingExpertCache(
                loader: loader, policy: LFUPolicy(),
                configuration: .init(budgetBytes: 8 * loader.bytesPerExpert, floorSlots: 1, readerThreads: 4, admissionWindow: window,
                                     roomAtRead: false),   // a window bounds reservations made when queued
                layers: [0, 1])
            defer { cache.close() }
            for _ in 0..<3 { try request(cache, 1, [1, 2, 3]) }    // layer 1's hot set, used often
            #expect(try request(cache, 0, [1, 2, 3, 4, 5, 6]).sorted() == [1, 2, 3, 4, 5, 6])
            let keptHot = (1...3).filter { cache.isResident(layer: 1, expert: $0) }.count
            if window == 2 {
                #expect(loader.peakConcurrentReads <= 2)
                #expect(keptHot == 3, "the window needs 2 slots beside the 3 hot experts; \(keptHot) stayed")
            } else {
                #expect(loader.peakConcurrentReads > 2)
                #expect(keptHot < 3)
            }
            #expect(cache.pinCount() == 0)
        }
    }

    /// With room made when each read starts (the default), a call that misses more than the
    /// budget spares gives up its own finished experts for its later reads, and the other
    /// layer's hot set stays; reserving every miss when queued evicts the hot set instead. The
    /// bytes held never pass the budget either way.
    @Test func roomMadeAtEachReadsStartComesFromTheCallsOwnFinishedExperts() throws {
        for roomAtRead in [true, false] {
            let loader = FakeLoader()
            loader.latency = 0.02...0.02
            let cache = try OffloadingExpertCache(
                loader: loader, policy: LFUPolicy(),
                configuration: .init(budgetBytes: 5 * loader.bytesPerExpert, floorSlots: 1, readerThreads: 1, roomAtRead: roomAtRead),
                layers: [0, 1])
            defer { cache.close() }
            for _ in 0..<3 { try request(cache, 1, [1, 2, 3]) }    // layer 1's hot set, used three times each
            #expect(try request(cache, 0, [1, 2, 3, 4, 5, 6]).sorted() == [1, 2, 3, 4, 5, 6])
            let keptHot = (1...3).filter { cache.isResident(layer: 1, expert: $0) }.count
            if roomAtRead {
                #expect(keptHot == 3, "the reads had the call's finished experts to evict; \(keptHot) hot experts stayed")
            } else {
                #expect(keptHot < 3)
            }
            let stats = cache.statistics()
            #expect(stats.peakUsedBytes <= 5 * loader.bytesPerExpert && stats.total.misses == 9)
            #expect(cache.pinCount() == 0)
        }
    }

    /// An expert evicted while its call still runs lets go of its weights then, not when the
    /// call returns: the call's own lists must not keep them (a buffer kept past its eviction
    /// is memory above the budget, and on a real store a fresh mapping for the next read).
    @Test func anExpertEvictedDuringItsCallIsReleasedAtOnce() throws {
        for roomAtRead in [true, false] {
            let loader = FakeLoader()
            loader.latency = 0.005...0.005
            let cache = try OffloadingExpertCache(
                loader: loader, policy: LRUPolicy(),
                configuration: .init(budgetBytes: 2 * loader.bytesPerExpert, floorSlots: 1, readerThreads: 1, roomAtRead: roomAtRead),
                layers: [0])
            defer { cache.close() }
            var livePeakInBody = 0
            try cache.withExperts(layer: 0, experts: Array(0..<8)) { _, _ in livePeakInBody = max(livePeakInBody, loader.liveNow) }
            // Two held by the cache, and one read finishing beside them.
            #expect(livePeakInBody <= 3, "\(livePeakInBody) experts' weights alive at once under a budget of 2 (room at read: \(roomAtRead))")
            #expect(cache.pinCount() == 0)
        }
    }

    /// A read queued before its room can be made waits, and starts as soon as the call's
    /// running experts let go of theirs; queued prefetches that hold room a demand needs now
    /// are cancelled for it.
    @Test func aReadWaitingForRoomStartsWhenRoomIsFreed() throws {
        let loader = FakeLoader()
        loader.block(ExpertKey(layer: 0, expert: 0))
        let cache = try OffloadingExpertCache(
            loader: loader, policy: LRUPolicy(),
            configuration: .init(budgetBytes: 3 * loader.bytesPerExpert, floorSlots: 1, readerThreads: 1, roomAtRead: true),
            layers: [0])
        defer { cache.close() }
        cache.prefetch(layer: 0, experts: [0, 1, 2], pipeline: false)          // fills the budget, all loading
        eventually("the first prefetch reading") { loader.order.count == 1 }
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { _ = try? request(cache, 0, [7, 8]); done.signal() }
        eventually("the demands queued") { cache.statistics().total.misses == 2 }
        #expect(cache.statistics().usedBytes == 3 * loader.bytesPerExpert)     // queued without room
        loader.open()
        done.wait()
        // Expert 0 arrived and was evicted for 7; 8's room came from the cancelled prefetches.
        #expect(loader.order.map(\.expert) == [0, 7, 8])
        #expect(cache.statistics().total.prefetchesCancelled == 2)
        #expect(cache.pinCount() == 0)
    }

    @Test func refusesABudgetBelowTheFloors() {
        #expect(throws: ExpertCacheError.self) {
            try makeCache(FakeLoader(), experts: 5, floor: 2, layers: [0, 1, 2])
        }
    }

    @Test func concurrentRequestsShareOneRead() throws {
        let loader = FakeLoader()
        loader.block(ExpertKey(layer: 0, expert: 5))
        let cache = try makeCache(loader, experts: 4)
        defer { cache.close() }
        let errors = Counter()
        // Plain threads: the dispatch pool grows slowly when its threads block.
        let finished = DispatchSemaphore(value: 0)
        for _ in 0..<8 {
            Thread {
                do { try request(cache, 0, [5]) } catch { errors.add("\(error)") }
                finished.signal()
            }.start()
        }
        eventually("all eight requests waiting") { cache.statistics().total.misses == 8 }
        loader.open()
        for _ in 0..<8 { finished.wait() }
        #expect(errors.values.isEmpty && loader.loads(0, 5) == 1)
        #expect(cache.pins(layer: 0, expert: 5) == 0)
    }

    @Test func demandReadsGoBeforePrefetches() throws {
        let loader = FakeLoader()
        loader.block(ExpertKey(layer: 0, expert: 1))
        let cache = try makeCache(loader, experts: 8, readers: 1)
        defer { cache.close() }
        cache.prefetch(layer: 0, experts: [1, 2, 3], pipeline: false)
        eventually("the first prefetch reading") { loader.order.count == 1 }
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { _ = try? request(cache, 0, [9]); done.signal() }
        eventually("the demand queued") { cache.statistics().total.misses == 1 }
        loader.open()
        done.wait()
        eventually("all reads done") { cache.isIdle }
        #expect(loader.order.map(\.expert) == [1, 9, 2, 3])
        let stats = cache.statistics().total
        #expect(stats.prefetchesIssued == 3 && stats.prefetchBytes == 300 && stats.demandBytes == 100)
        // A prefetched expert's first use is a prefetch hit; evicting one unused is waste.
        try request(cache, 0, [2])
        #expect(cache.statistics().total.prefetchHits == 1)
    }

    @Test func aPrefetchThatBecomesADemandIsPromotedNotReadTwice() throws {
        let loader = FakeLoader()
        loader.block(ExpertKey(layer: 0, expert: 0))
        let cache = try makeCache(loader, experts: 8, readers: 1)
        defer { cache.close() }
        cache.prefetch(layer: 0, experts: [0, 1, 2], pipeline: false)
        eventually("the first prefetch reading") { loader.order.count == 1 }
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { _ = try? request(cache, 0, [2]); done.signal() }
        eventually("the demand joined the prefetch") { cache.statistics().total.prefetchesPromoted == 1 }
        loader.open()
        done.wait()
        eventually("all reads done") { cache.isIdle }
        #expect(loader.order.map(\.expert) == [0, 2, 1])
        #expect(loader.loads(0, 2) == 1)
        let stats = cache.statistics().total
        #expect(stats.demandBytes == 100 && stats.prefetchBytes == 200 && stats.misses == 1)
        #expect(stats.prefetchesLate == 1 && stats.prefetchHits == 0)   // right, but not yet read
    }

    @Test func aDemandThatFindsItsPrefetchBeingReadCountsItLate() throws {
        let loader = FakeLoader()
        loader.block(ExpertKey(layer: 0, expert: 0))
        let cache = try makeCache(loader, experts: 8, readers: 1)
        defer { cache.close() }
        cache.prefetch(layer: 0, experts: [0, 1], pipeline: false)
        eventually("the first prefetch reading") { loader.order.count == 1 }
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { _ = try? request(cache, 0, [0]); done.signal() }
        eventually("the demand joined the read") { cache.statistics().total.misses == 1 }
        loader.open()
        done.wait()
        eventually("all reads done") { cache.isIdle }
        try request(cache, 0, [1])                                           // this one was in time
        let stats = cache.statistics().total
        #expect(stats.prefetchesLate == 1 && stats.prefetchesPromoted == 0 && stats.prefetchHits == 1)
        #expect(stats.misses == 1 && stats.hits == 1 && loader.loads(0, 0) == 1)
    }

    @Test func unstartedPrefetchesCanBeCancelled() throws {
        let loader = FakeLoader()
        loader.block(ExpertKey(layer: 0, expert: 0))
        let cache = try makeCache(loader, experts: 8, readers: 1)
        defer { cache.close() }
        cache.prefetch(layer: 0, experts: [0, 1, 2, 3], pipeline: false)
        eventually("the first prefetch reading") { loader.order.count == 1 }
        #expect(cache.cancelPrefetches(layer: 0, experts: [0, 2, 3]) == 2)     // 0 has started
        #expect(cache.statistics().usedBytes == 200)                           // 0 and 1 remain
        loader.open()
        eventually("all reads done") { cache.isIdle }
        #expect(loader.order.map(\.expert) == [0, 1])
        #expect(cache.statistics().total.prefetchesCancelled == 2)
    }

    @Test func aDemandCancelsQueuedPrefetchesWhenItNeedsTheirRoom() throws {
        let loader = FakeLoader()
        loader.block(ExpertKey(layer: 0, expert: 0))
        // Room reserved when the demand is queued (with room made at read start, above).
        let cache = try makeCache(loader, experts: 3, readers: 1, roomAtRead: false)
        defer { cache.close() }
        cache.prefetch(layer: 0, experts: [0, 1, 2], pipeline: false)          // fills the budget, all loading
        eventually("the first prefetch reading") { loader.order.count == 1 }
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { _ = try? request(cache, 0, [7]); done.signal() }
        eventually("the demand admitted") { cache.statistics().total.prefetchesCancelled == 2 }
        loader.open()
        done.wait()
        #expect(loader.order.map(\.expert) == [0, 7])
    }

    @Test func loaderErrorsReachTheCallerAndTheCacheRecovers() throws {
        let loader = FakeLoader()
        loader.failing = [ExpertKey(layer: 0, expert: 4)]
        let cache = try makeCache(loader, experts: 3)
        defer { cache.close() }
        #expect(throws: FakeLoadError(key: ExpertKey(layer: 0, expert: 4))) { try request(cache, 0, [1, 4]) }
        #expect(cache.pins(layer: 0, expert: 1) == 0 && cache.statistics().total.loadFailures == 1)
        #expect(cache.statistics().usedBytes == 100)                              // 4's reservation freed
        #expect(throws: FakeLoadError.self) { try request(cache, 0, [4]) }        // retried, fails again
        #expect(loader.loads(0, 4) == 2)
        loader.failing = []
        #expect(try request(cache, 0, [4]) == [4])
    }

    @Test func bodyErrorsReleasePins() throws {
        struct Stop: Error {}
        let loader = FakeLoader()
        let cache = try makeCache(loader, experts: 3)
        defer { cache.close() }
        try request(cache, 0, [1])
        #expect(throws: Stop.self) {
            try cache.withExperts(layer: 0, experts: [1, 2, 3]) { expert, _ in if expert == 1 { throw Stop() } }
        }
        for e in 1...3 { #expect(cache.pins(layer: 0, expert: e) == 0) }
        try request(cache, 0, [4, 5, 6])      // everything above is evictable again
    }

    @Test func twoWorkersRunEveryExpertOnceAndReleaseThePins() throws {
        let loader = FakeLoader()
        loader.latency = 0.0005...0.002
        let cache = try makeCache(loader, experts: 16)
        defer { cache.close() }
        try request(cache, 0, [0, 1, 2])                   // some resident, the rest misses
        let seen = Counter()
        var pinnedFirst = false
        try cache.withExperts(layer: 0, experts: Array(0..<12), workers: 2, pinned: {
            pinnedFirst = true
            // Everything is pinned or queued before any body runs.
            for e in 0..<3 { #expect(cache.pins(layer: 0, expert: e) == 1) }
        }) { worker, expert, weights in
            #expect(pinnedFirst && (0..<2).contains(worker))
            #expect(weights.fakeIdentity == expert)
            seen.add("\(expert)")
        }
        #expect(seen.values.sorted() == (0..<12).map { "\($0)" }.sorted())
        for e in 0..<12 { #expect(cache.pins(layer: 0, expert: e) == 0 && loader.loads(0, e) == 1) }
        #expect(cache.statistics().total.hits == 3 && cache.statistics().total.misses == 12)
    }

    @Test func twoWorkersStopOnAFailureAndReleaseEverything() throws {
        struct Stop: Error {}
        let loader = FakeLoader()
        loader.latency = 0.0005...0.001
        loader.failing = [ExpertKey(layer: 0, expert: 7)]
        let cache = try makeCache(loader, experts: 16, layers: [0, 1])
        defer { cache.close() }
        #expect(throws: FakeLoadError(key: ExpertKey(layer: 0, expert: 7))) {
            try cache.withExperts(layer: 0, experts: Array(0..<10), workers: 2, pinned: {}) { _, _, _ in }
        }
        eventually("all reads done") { cache.isIdle }
        for e in 0..<10 { #expect(cache.pins(layer: 0, expert: e) == 0) }
        #expect(throws: Stop.self) {
            try cache.withExperts(layer: 1, experts: Array(0..<6), workers: 2, pinned: {}) { _, expert, _ in
                if expert == 2 { throw Stop() }
            }
        }
        eventually("all reads done") { cache.isIdle }
        for e in 0..<6 { #expect(cache.pins(layer: 1, expert: e) == 0) }
    }

    @Test(arguments: [PolicyChoice.lru, .lfu, .lrfu, .fate, .hotset, .learned, .sequence])
    func budgetHoldsUnderConcurrentRandomLoad(choice: PolicyChoice) throws {
        let loader = FakeLoader()
        loader.latency = 0...0.0002
        let layers = [0, 1, 2, 3]
        let budgetExperts = 10
        let cache = try makeCache(loader, experts: budgetExperts, floor: 2, layers: layers, readers: 3,
                                  policy: choice.make(layerCount: 4, hotPerLayer: 1))
        defer { cache.close() }
        let group = DispatchGroup()
        let errors = Counter()
        for thread in 0..<4 {
            DispatchQueue.global().async(group: group) {
                var rng = SplitMix64(seed: UInt64(thread + 1) * 104_729)
                for _ in 0..<150 {
                    let layer = layers.randomElement(using: &rng)!
                    let experts = (0..<Int.random(in: 1...2, using: &rng)).map { _ in Int.random(in: 0..<8, using: &rng) }
                    do {
                        // Each thread is a sequence, as the engine reports them (the sequence-aware policy listens).
                        let routing = TokenRouting(experts: Array(Set(experts)), weights: [])
                        cache.noteSequenceRouting(layer: layer, sequences: [SequenceRows(id: thread, rows: 0..<1)], routes: [routing])
                        try request(cache, layer, experts)
                        if Int.random(in: 0..<4, using: &rng) == 0 {
                            cache.prefetch(layer: (layer + 1) % 4, experts: [Int.random(in: 0..<8, using: &rng)], pipeline: false)
                        }
                        if Int.random(in: 0..<10, using: &rng) == 0 { cache.cancelPrefetches(layer: layer) }
                    } catch {
                        errors.add("\(error)")
                    }
                }
                cache.sequenceEnded(thread)
            }
        }
        group.wait()
        eventually("all reads done") { cache.isIdle }
        if choice == .sequence {
            // The default duels two sequence-aware policies; both must have ended every sequence.
            #expect(cache.withPolicy { policy in
                let duel = policy as? DuelingPolicy<SequenceAwarePolicy, SequenceAwarePolicy>
                return duel.map { [$0.contenders.first, $0.contenders.second] } ?? [policy as! SequenceAwarePolicy]
            }.allSatisfy { $0.runningSequences == 0 })
        }
        let stats = cache.statistics()
        #expect(errors.values.isEmpty)
        #expect(stats.peakUsedBytes <= stats.budgetBytes)
        #expect(stats.total.hits + stats.total.misses > 0)
        // Weights alive at once: the budget, plus one a thread may still hold while releasing.
        #expect(loader.peakLive <= budgetExperts + 4)
        for layer in layers { for e in 0..<8 { #expect(cache.pins(layer: layer, expert: e) == 0) } }
    }
}

/// Collects messages from several threads.
private final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [String] = []
    func add(_ message: String) { lock.withLock { stored.append(message) } }
    var values: [String] { lock.withLock { stored } }
}

/// `--skip-missing-below` decided by the cache, where residency is known.
@Suite struct SkipWeakMissingTests {
    @Test func skipsWeakExpertsThatAreNotResidentAndCountsThem() throws {
        let loader = FakeLoader()
        let cache = try OffloadingExpertCache(loader: loader, policy: LRUPolicy(),
                                              configuration: .init(budgetBytes: 4 * loader.bytesPerExpert, floorSlots: 1, readerThreads: 2),
                                              layers: [0])
        defer { cache.close() }
        try cache.withExperts(layer: 0, experts: [1]) { _, _ in }   // expert 1 resident, 2 and 3 not
        var routes = [TokenRouting(experts: [3, 1, 2], weights: [0.6, 0.2, 0.2])]

        cache.skipWeakMissing(layer: 0, routes: &routes)            // off by default: exact
        #expect(routes[0].experts == [3, 1, 2])

        cache.skipMissingBelow = 0.25
        cache.skipWeakMissing(layer: 0, routes: &routes)
        #expect(routes[0].experts == [3, 1])                         // 2 skipped; 3 strong, 1 resident
        #expect(abs(routes[0].weights.reduce(0, +) - 1) < 1e-6)
        let stats = cache.statistics()
        #expect(stats.total.skippedTokens == 1 && stats.total.skippedExperts == 1 && stats.perLayer[0]?.skippedTokens == 1)
        #expect(loader.loads(0, 2) == 0)                             // never read
    }
}
