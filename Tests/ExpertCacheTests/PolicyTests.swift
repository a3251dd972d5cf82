import Testing
@testable import ExpertCache

private func key(_ layer: Int, _ expert: Int) -> ExpertKey { ExpertKey(layer: layer, expert: expert) }
private let a = key(0, 0), b = key(0, 1), c = key(0, 2), d = key(0, 3)

@Suite struct PolicyTests {
    @Test func lruEvictsLeastRecentlyUsed() {
        var policy = LRUPolicy()
        for k in [a, b, c] { policy.didInsert(k); policy.didAccess(k) }
        policy.didAccess(a)
        #expect(policy.victim(among: [a, b, c]) == b)
        policy.didAccess(b)
        #expect(policy.victim(among: [a, b, c]) == c)
        #expect(policy.victim(among: [a, b]) == a)
    }

    @Test func lfuCountsInsertOnceAndAges() {
        var policy = LFUPolicy(agingPeriod: 4)
        policy.didInsert(a); policy.didAccess(a)   // one reference (the insert)
        #expect(policy.count(a) == 1)
        policy.didAccess(a)                         // 2; layer references: 2
        policy.didAccess(a)                         // 3; layer references: 3
        policy.didInsert(b)                         // 4th reference: halve → a = 1, b = 0
        #expect(policy.count(a) == 1 && policy.count(b) == 0)
        #expect(policy.victim(among: [a, b]) == b)
        policy.didAccess(b)                         // consumed by the insert: still 0
        policy.didAccess(b)                         // 1
        // Equal counts: the least recently used goes.
        #expect(policy.victim(among: [a, b]) == a)
        // History survives eviction.
        policy.didEvict(a)
        #expect(policy.count(a) == 1)
    }

    @Test func lrfuMatchesHandComputedCRF() {
        // λ = 0.5. a at t=1,2; b at t=3. At t=3: CRF(a) = 2^-1 + 2^-0.5 = 1.207 > CRF(b) = 1.
        var policy = LRFUPolicy(lambda: 0.5)
        policy.didInsert(a); policy.didAccess(a)
        policy.didAccess(a)
        policy.didInsert(b)
        #expect(policy.victim(among: [a, b]) == b)
        // b again at t=4: CRF(b) = 1 + 2^-0.5 = 1.707 > CRF(a) = 2^-1.5 + 2^-1 = 0.854.
        policy.didAccess(b); policy.didAccess(b)
        #expect(policy.victim(among: [a, b]) == a)
    }

    @Test func lrfuExtremesAreLRUAndLFU() {
        var recency = LRFUPolicy(lambda: 1)
        var frequency = LRFUPolicy(lambda: 0)
        for k in [a, a, a, b] {
            recency.didInsert(k); recency.didAccess(k)
            frequency.didInsert(k); frequency.didAccess(k)
        }
        #expect(recency.victim(among: [a, b]) == a)
        #expect(frequency.victim(among: [a, b]) == b)
    }

    @Test func layerAwareEvictsDeepLayersFirst() {
        var policy = LayerAwarePolicy(shallowLayerCount: 2)
        let shallow = key(0, 1), deep = key(3, 5), shallower = key(1, 2)
        for k in [shallow, shallower, deep] { policy.didInsert(k); policy.didAccess(k) }
        // The deep expert is the most recent, yet it goes first.
        #expect(policy.victim(among: [shallow, shallower, deep]) == deep)
        // Among shallow ones, the inner LRU decides.
        #expect(policy.victim(among: [shallow, shallower]) == shallow)
    }

    @Test func hotSetProtectsMostUsed() {
        var policy = HotSetPolicy(hotPerLayer: 1, refreshPeriod: 4)
        policy.didInsert(a); policy.didAccess(a)
        policy.didAccess(a); policy.didAccess(a)
        policy.didInsert(b)                         // 4th reference: hot set = {a}
        #expect(policy.isHot(a) && !policy.isHot(b))
        policy.didInsert(c)
        // a is the least recent, but hot: b (oldest cold) goes.
        #expect(policy.victim(among: [a, b, c]) == b)
        #expect(policy.victim(among: [a]) == a)
        let fixed = HotSetPolicy(fixedHotSet: [c])
        #expect(fixed.victim(among: [b, c]) == b)
    }

    @Test func beladyEvictsFarthestNextUse() {
        var policy = BeladyPolicy()
        policy.observeNextUse(a, at: 10)
        policy.observeNextUse(b, at: 5)
        policy.observeNextUse(c, at: Int.max)
        policy.observeNextUse(d, at: Int.max)
        #expect(policy.victim(among: [a, b, c, d]) == c)    // never used again; lowest of the tie
        #expect(policy.victim(among: [a, b]) == a)
    }
}
