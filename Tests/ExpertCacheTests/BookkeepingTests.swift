import Testing
@testable import ExpertCache

private func key(_ layer: Int, _ expert: Int) -> ExpertKey { ExpertKey(layer: layer, expert: expert) }

/// Reserves, loads and uses `k` (one demand miss), leaving it unpinned.
private func admit(_ book: inout CacheBookkeeping, _ k: ExpertKey, bytes: Int = 1) -> [CacheBookkeeping.Eviction] {
    guard case .reserved(let evicted) = book.reserve(k, bytes: bytes, pins: 1) else {
        Issue.record("no room for \(k)")
        return []
    }
    book.loaded(k)
    book.use(k)
    book.unpin(k)
    return evicted
}

@Suite struct BookkeepingTests {
    @Test func evictsByPolicyAndSkipsPinned() {
        var book = CacheBookkeeping(budgetBytes: 3, policy: LRUPolicy())
        for e in 0..<3 { #expect(admit(&book, key(0, e)).isEmpty) }
        #expect(admit(&book, key(0, 3)).map(\.key) == [key(0, 0)])
        book.pin(key(0, 1))
        #expect(admit(&book, key(0, 4)).map(\.key) == [key(0, 2)])     // 1 is older but pinned
        #expect(book.usedBytes == 3 && book.peakUsedBytes == 3)
        #expect(book.residentKeys == [key(0, 1), key(0, 3), key(0, 4)])
    }

    /// An expert a prediction expects its layer to use goes last, whatever the policy says; the
    /// mark ends with its use, its withdrawal or its eviction, and never blocks a reservation.
    @Test func expectedExpertsAreEvictedLast() {
        var book = CacheBookkeeping(budgetBytes: 3, policy: LRUPolicy())
        for e in 0..<3 { _ = admit(&book, key(0, e)) }
        book.expect(key(0, 0))                                          // the LRU victim, but expected
        #expect(admit(&book, key(1, 0)).map(\.key) == [key(0, 1)])
        book.use(key(0, 0))                                             // used: the mark is spent
        #expect(book.expected.isEmpty)
        book.expect(key(0, 2))
        book.unexpect(key(0, 2))                                        // a withdrawn guess
        #expect(admit(&book, key(1, 1)).map(\.key) == [key(0, 2)])
        // When only expected experts are left, the policy's victim among them goes rather than
        // nothing (LRU order now: (1, 0), then (0, 0), then (1, 1)).
        for k in [key(0, 0), key(1, 0), key(1, 1)] { book.expect(k) }
        #expect(admit(&book, key(1, 2)).map(\.key) == [key(1, 0)])
        #expect(book.expected == [key(0, 0), key(1, 1)])
        book.unexpect { $0.layer == 1 }                                 // a layer's guesses withdrawn at once
        #expect(book.expected == [key(0, 0)])
    }

    @Test func noRoomWhenAllPinnedOrLoadingAndTooLarge() {
        var book = CacheBookkeeping(budgetBytes: 2, policy: LRUPolicy())
        let r1 = book.reserve(key(0, 0), bytes: 1, pins: 1)
        #expect(r1 == .reserved(evicted: []))     // loading
        _ = admit(&book, key(0, 1))
        book.pin(key(0, 1))
        let r2 = book.reserve(key(0, 2), bytes: 1, pins: 1)
        #expect(r2 == .noRoom)
        #expect(book.entry(key(0, 2)) == nil)
        let r3 = book.reserve(key(0, 3), bytes: 3, pins: 1)
        #expect(r3 == .tooLarge)
        book.unpin(key(0, 1))
        let r4 = book.reserve(key(0, 2), bytes: 1, pins: 1)
        #expect(r4 == .reserved(evicted: [
            .init(key: key(0, 1), bytes: 1, wastedPrefetch: false)]))
    }

    @Test func multipleVictimsForALargerExpertOnlyIfAllFit() {
        var book = CacheBookkeeping(budgetBytes: 4, policy: LRUPolicy())
        for e in 0..<4 { _ = admit(&book, key(0, e)) }
        book.pin(key(0, 2))
        book.pin(key(0, 3))
        // 3 bytes need 3 victims but only two are evictable: nothing is evicted.
        let r5 = book.reserve(key(0, 9), bytes: 3, pins: 1)
        #expect(r5 == .noRoom)
        #expect(book.usedBytes == 4)
        let r6 = book.reserve(key(0, 9), bytes: 2, pins: 1)
        #expect(r6
                == .reserved(evicted: [.init(key: key(0, 0), bytes: 1, wastedPrefetch: false),
                                       .init(key: key(0, 1), bytes: 1, wastedPrefetch: false)]))
    }

    @Test func floorsProtectOtherLayers() {
        var book = CacheBookkeeping(budgetBytes: 4, floorSlots: 1, policy: LRUPolicy())
        _ = admit(&book, key(2, 0))   // oldest, but layer 2's only expert: protected by its floor
        _ = admit(&book, key(0, 0))
        _ = admit(&book, key(0, 1))
        _ = admit(&book, key(1, 0))
        #expect(admit(&book, key(1, 1)).map(\.key) == [key(0, 0)])
        // Layer 0 is now at its floor: layer 1 must evict its own.
        #expect(admit(&book, key(1, 2)).map(\.key) == [key(1, 0)])
        // A layer can always evict its own experts, floor or not.
        #expect(admit(&book, key(2, 1)).map(\.key) == [key(2, 0)])
    }

    @Test func perLayerBudget() {
        var book = CacheBookkeeping(budgetBytes: .max, layerBudgetBytes: 2, policy: LRUPolicy())
        _ = admit(&book, key(0, 0)); _ = admit(&book, key(1, 0)); _ = admit(&book, key(0, 1))
        #expect(admit(&book, key(1, 1)).isEmpty)
        #expect(admit(&book, key(1, 2)).map(\.key) == [key(1, 0)])     // not layer 0's older ones
    }

    @Test func unusedPrefetchIsReportedWasted() {
        var book = CacheBookkeeping(budgetBytes: 2, policy: LRUPolicy())
        let r7 = book.reserve(key(0, 0), bytes: 1, pins: 0, prefetch: true)
        #expect(r7 == .reserved(evicted: []))
        book.loaded(key(0, 0))
        let r8 = book.reserve(key(0, 1), bytes: 1, pins: 0, prefetch: true)
        #expect(r8 == .reserved(evicted: []))
        book.loaded(key(0, 1))
        book.pin(key(0, 1))
        let r9 = book.use(key(0, 1))
        #expect(r9 == true)    // a prefetch hit
        let r10 = book.use(key(0, 1))
        #expect(r10 == false)
        book.unpin(key(0, 1))
        let evicted = admit(&book, key(0, 2))
        #expect(evicted == [.init(key: key(0, 0), bytes: 1, wastedPrefetch: true)])
    }

    /// A read tracked before its room is made holds no bytes and evicts nothing; its room is
    /// made when its read starts, by the policy as it stands then (here LRU: the expert used
    /// longest ago, which at tracking time was another), and not while pins hold everything.
    @Test func aReadReservedLaterHoldsNothingUntilItsRoomIsMade() {
        var book = CacheBookkeeping(budgetBytes: 3, policy: LRUPolicy())
        for e in 0..<3 { _ = admit(&book, key(0, e)) }
        let tracked = book.reserveLater(key(1, 0), bytes: 1, pins: 1)
        let tooLarge = book.reserveLater(key(1, 1), bytes: 4, pins: 1)  // larger than the budget
        #expect(tracked == .reserved(evicted: []) && tooLarge == .tooLarge)
        #expect(book.entry(key(1, 1)) == nil)
        #expect(book.usedBytes == 3 && book.slots(layer: 1) == 0 && book.bytes(layer: 1) == 0)
        #expect(book.entry(key(1, 0))?.awaitingRoom == true && book.entry(key(1, 0))?.residency == .loading)
        book.use(key(0, 0))                                             // 1 is now the LRU expert
        for e in 0..<3 { book.pin(key(0, e)) }
        let refused = book.makeRoom(for: key(1, 0))                    // everything pinned
        #expect(refused == .noRoom)
        #expect(book.entry(key(1, 0))?.awaitingRoom == true && book.usedBytes == 3)
        book.unpin(key(0, 1)); book.unpin(key(0, 2))
        let made = book.makeRoom(for: key(1, 0))
        #expect(made == .reserved(evicted: [.init(key: key(0, 1), bytes: 1, wastedPrefetch: false)]))
        #expect(book.entry(key(1, 0))?.awaitingRoom == false)
        #expect(book.usedBytes == 3 && book.slots(layer: 1) == 1 && book.bytes(layer: 1) == 1)
        book.loaded(key(1, 0))
        #expect(book.entry(key(1, 0))?.residency == .resident)
        // Removed while still waiting for room (a failed request): it freed nothing, held nothing.
        let waitingOne = book.reserveLater(key(1, 2), bytes: 1, pins: 0)
        #expect(waitingOne == .reserved(evicted: []))
        book.remove(key(1, 2))
        #expect(book.entry(key(1, 2)) == nil && book.usedBytes == 3 && book.slots(layer: 1) == 1)
    }

    @Test func removeFreesLoadingBytes() {
        var book = CacheBookkeeping(budgetBytes: 1, policy: LRUPolicy())
        let r11 = book.reserve(key(0, 0), bytes: 1, pins: 2)
        #expect(r11 == .reserved(evicted: []))
        book.remove(key(0, 0))
        #expect(book.usedBytes == 0 && book.entry(key(0, 0)) == nil)
        let r12 = book.reserve(key(0, 1), bytes: 1, pins: 1)
        #expect(r12 == .reserved(evicted: []))
    }

    @Test func pipelinePrefetchesAreNotHeldToTheSpeculativeBound() {
        var book = CacheBookkeeping(budgetBytes: 6, speculativeLayerBytes: 2, policy: LRUPolicy())
        // A prefill chunk's union for layer 1: four loading prefetches, twice the bound.
        for e in 0..<4 {
            #expect(book.reserve(key(1, e), bytes: 1, pins: 0, prefetch: true, unbounded: true) == .reserved(evicted: []))
        }
        #expect(book.speculativeBytes(layer: 1) == 4)
        // They still count as speculation: a decode hint for the layer now finds the bound full.
        #expect(book.reserve(key(1, 4), bytes: 1, pins: 0, prefetch: true) == .noRoom)
        // Room is still the limit: the budget holds six and four are loading (unevictable).
        #expect(book.reserve(key(2, 0), bytes: 1, pins: 0, prefetch: true, unbounded: true) == .reserved(evicted: []))
        #expect(book.reserve(key(2, 1), bytes: 1, pins: 0, prefetch: true, unbounded: true) == .reserved(evicted: []))
        #expect(book.reserve(key(2, 2), bytes: 1, pins: 0, prefetch: true, unbounded: true) == .noRoom)
    }

    @Test func aLayersUnusedPrefetchesStayWithinItsSpeculativeBound() {
        var book = CacheBookkeeping(budgetBytes: 6, speculativeLayerBytes: 2, policy: LRUPolicy())
        for e in 0..<4 { _ = admit(&book, key(0, e)) }                    // demand-used experts of layer 0
        // Two prefetches of layer 1 fit the bound (taking the free room).
        let first = book.reserve(key(1, 0), bytes: 1, pins: 0, prefetch: true)
        let second = book.reserve(key(1, 1), bytes: 1, pins: 0, prefetch: true)
        #expect(first == .reserved(evicted: []) && second == .reserved(evicted: []))
        #expect(book.speculativeBytes(layer: 1) == 2)
        // A third is refused while the other two still load: they hold the layer's bound.
        let third = book.reserve(key(1, 2), bytes: 1, pins: 0, prefetch: true)
        #expect(third == .noRoom)
        book.loaded(key(1, 0))
        book.loaded(key(1, 1))
        // Once loaded, the oldest unused one makes way; no demand-used expert is evicted for it.
        guard case .reserved(let evicted) = book.reserve(key(1, 2), bytes: 1, pins: 0, prefetch: true) else {
            Issue.record("expected room")
            return
        }
        #expect(evicted == [.init(key: key(1, 0), bytes: 1, wastedPrefetch: true)])
        #expect(book.speculativeBytes(layer: 1) == 2 && (0..<4).allSatisfy { book.entry(key(0, $0)) != nil })
        // A demand use turns a prefetch into an ordinary entry and frees its share of the bound.
        book.pin(key(1, 1))
        let prefetchHit = book.use(key(1, 1))
        #expect(prefetchHit)
        book.unpin(key(1, 1))
        #expect(book.speculativeBytes(layer: 1) == 1)
        // Other layers have their own bound; demand reservations are not bounded by it.
        let otherLayer = book.reserve(key(2, 0), bytes: 1, pins: 0, prefetch: true)
        #expect(otherLayer != .noRoom)
        let demandEvictions = admit(&book, key(3, 0))
        #expect(demandEvictions.count == 1)
        #expect(book.usedBytes <= 6)
    }
}
