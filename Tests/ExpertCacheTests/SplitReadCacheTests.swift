import Foundation
import ModelFormats
import Testing
@testable import ExpertCache
import TensorMath

/// A loader whose reads arrive in two parts: it hands over the early copy (gate and up), then
/// holds the rest until the test lets it go, and finishes the rest successfully or with an error.
private final class SplitLoader: ExpertLoader, @unchecked Sendable {
    let bytesPerExpert = 100
    private let lock = NSLock()
    private var loadCounts: [ExpertKey: Int] = [:]
    /// Reads whose rest fails (once each).
    var failingRest: Set<ExpertKey> = []
    /// Signalled once per read, when its early copy has been handed over.
    let earlyHandedOver = DispatchSemaphore(value: 0)
    /// The rest of each read waits for one signal.
    let restGate = DispatchSemaphore(value: 0)

    func expertByteCount(layer: Int, expert: Int) -> Int { bytesPerExpert }

    func loads(_ layer: Int, _ expert: Int) -> Int { lock.withLock { loadCounts[ExpertKey(layer: layer, expert: expert)] ?? 0 } }

    func loadExpert(layer: Int, expert: Int) throws -> ExpertWeights {
        try loadExpert(layer: layer, expert: expert) { _ in }
    }

    func loadExpert(layer: Int, expert: Int, gateUpArrived: (ExpertWeights) -> Void) throws -> ExpertWeights {
        let key = ExpertKey(layer: layer, expert: expert)
        let fails = lock.withLock { () -> Bool in
            loadCounts[key, default: 0] += 1
            return failingRest.remove(key) != nil
        }
        let matrix = WeightMatrix(rows: 1, cols: 1, values: [Float(layer * 1000 + expert)])
        let rest = ExpertArrival()
        gateUpArrived(ExpertWeights(gate: matrix, up: matrix, down: matrix, rest: rest))
        earlyHandedOver.signal()
        restGate.wait()
        if fails {
            let error = FakeLoadError(key: key)
            rest.finish(failure: error)
            throw error
        }
        rest.finish()
        return ExpertWeights(gate: matrix, up: matrix, down: matrix)
    }
}

/// What the body of one request saw of each expert: whether it came early, and whether its rest
/// was still arriving when the body began.
private final class Sightings: @unchecked Sendable {
    private let lock = NSLock()
    private var seen: [(expert: Int, early: Bool, arriving: Bool)] = []
    func add(_ expert: Int, _ weights: ExpertWeights) {
        lock.withLock { seen.append((expert, weights.rest != nil, weights.rest.map { !$0.isFinished } ?? false)) }
    }
    var all: [(expert: Int, early: Bool, arriving: Bool)] { lock.withLock { seen } }
}

@Suite(.serialized) struct SplitReadCacheTests {
    private func makeCache(_ loader: SplitLoader) throws -> OffloadingExpertCache {
        try OffloadingExpertCache(loader: loader, policy: LRUPolicy(),
                                  configuration: .init(budgetBytes: 4 * loader.bytesPerExpert, floorSlots: 1, readerThreads: 2),
                                  layers: [0])
    }

    /// A request that takes early copies begins on a missing expert while its down matrix is still
    /// arriving, waits for it before the down product, and counts a split start; the expert is then
    /// resident and whole for the next request, with the early use recorded by the policy.
    @Test func aRequestBeginsOnAnExpertBeforeItsDownArrives() throws {
        let loader = SplitLoader()
        let cache = try makeCache(loader)
        defer { cache.close() }
        let sightings = Sightings()
        let waitedForDown = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        let failure = LockedBox<Error?>(nil)
        Thread {
            do {
                try cache.withExperts(layer: 0, experts: [5], workers: 1, pinned: {}, residentsRan: nil, startsBeforeDown: true) { _, expert, weights in
                    sightings.add(expert, weights)
                    #expect(weights.gate.row(0)[0] == 5)
                    try weights.rest?.wait()
                    waitedForDown.signal()
                }
            } catch {
                failure.set(error)
            }
            done.signal()
        }.start()
        #expect(loader.earlyHandedOver.wait(timeout: .now() + 10) == .success)
        // The body runs on the early copy while the loader still holds the rest.
        eventually("the body began on the early copy") { !sightings.all.isEmpty }
        #expect(sightings.all.first.map { $0.early && $0.arriving } == true)
        #expect(waitedForDown.wait(timeout: .now() + 0.05) == .timedOut) // it waits for the rest
        #expect(!cache.isResident(layer: 0, expert: 5))
        loader.restGate.signal()
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(failure.get() == nil)
        // The request may return before the reader has published the whole expert (it finished
        // `rest` first): resident a moment later, and nothing pinned.
        eventually("the whole expert is resident") { cache.isResident(layer: 0, expert: 5) }
        #expect(cache.pinCount() == 0)
        var stats = cache.statistics()
        #expect(stats.total.splitStarts == 1 && stats.total.misses == 1 && stats.total.loadFailures == 0)
        // The next request gets the whole expert as a hit, without `rest`.
        let again = Sightings()
        try cache.withExperts(layer: 0, experts: [5], workers: 1, pinned: {}, residentsRan: nil, startsBeforeDown: true) { _, expert, weights in
            again.add(expert, weights)
        }
        stats = cache.statistics()
        #expect(again.all.count == 1 && again.all[0].early == false && stats.total.hits == 1 && loader.loads(0, 5) == 1)
    }

    /// A request that does not take early copies only ever sees whole experts, even from a loader
    /// that splits its reads.
    @Test func aRequestThatDoesNotTakeEarlyCopiesSeesWholeExperts() throws {
        let loader = SplitLoader()
        let cache = try makeCache(loader)
        defer { cache.close() }
        loader.restGate.signal()
        loader.restGate.signal()
        let sightings = Sightings()
        try cache.withExperts(layer: 0, experts: [1, 2], workers: 2, pinned: {}) { _, expert, weights in
            sightings.add(expert, weights)
        }
        #expect(sightings.all.count == 2 && sightings.all.allSatisfy { !$0.early })
        #expect(cache.statistics().total.splitStarts == 0)
    }

    /// The rest of a read fails after a request began on its early copy: the request fails with the
    /// loader's error, nothing is left pinned or resident, and the next request reads it again.
    @Test func aSplitReadThatFailsAfterItsEarlyCopyEndsTheRequestAndLeavesNothing() throws {
        let loader = SplitLoader()
        loader.failingRest = [ExpertKey(layer: 0, expert: 7)]
        let cache = try makeCache(loader)
        defer { cache.close() }
        let began = Sightings()
        let done = DispatchSemaphore(value: 0)
        let failure = LockedBox<Error?>(nil)
        Thread {
            do {
                try cache.withExperts(layer: 0, experts: [7], workers: 2, pinned: {}, residentsRan: nil, startsBeforeDown: true) { _, expert, weights in
                    began.add(expert, weights)
                    try weights.rest?.wait()
                    Issue.record("the down product ran on a failed read")
                }
            } catch {
                failure.set(error)
            }
            done.signal()
        }.start()
        eventually("the body began on the early copy") { !began.all.isEmpty }
        loader.restGate.signal()
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect((failure.get() as? FakeLoadError)?.key == ExpertKey(layer: 0, expert: 7))
        eventually("the failed read is forgotten") { cache.statistics().total.loadFailures == 1 }
        #expect(!cache.isResident(layer: 0, expert: 7) && cache.pinCount() == 0)
        #expect(cache.statistics().total.loadFailures == 1 && cache.statistics().usedBytes == 0)
        // Read again, whole this time.
        loader.restGate.signal()
        let again = Sightings()
        try cache.withExperts(layer: 0, experts: [7], workers: 1, pinned: {}) { _, expert, weights in again.add(expert, weights) }
        #expect(again.all.count == 1 && loader.loads(0, 7) == 2 && cache.isResident(layer: 0, expert: 7))
    }
}

/// A value shared with a thread, under a lock.
private final class LockedBox<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func set(_ newValue: Value) { lock.withLock { value = newValue } }
    func get() -> Value { lock.withLock { value } }
}
