import Foundation
import Testing
@testable import ExpertCache

private func key(_ layer: Int, _ expert: Int) -> ExpertKey { ExpertKey(layer: layer, expert: expert) }

@Suite struct DuelingPolicyTests {
    /// A cache of two experts run by LRU and LFU dueling: the role of the real cache is played by
    /// a `SimulatedCache`, which calls the policy as the bookkeeping does (insert, access, evict).
    typealias Duel = DuelingPolicy<LRUPolicy, LFUPolicy>

    /// One hot expert used every third time, a new one in between: LRU evicts the hot one just
    /// before it comes back, LFU keeps it.
    static func hotAmongScans(_ count: Int, firstNew: Int = 100) -> [ExpertKey] {
        (0..<count).map { $0 % 3 == 0 ? key(0, 0) : key(0, firstNew + $0) }
    }

    @Test func theCacheFollowsTheContenderThatHits() {
        var real = SimulatedCache(policy: Duel(LRUPolicy(), LFUPolicy(), limit: 8))
        var lruAlone = SimulatedCache(policy: LRUPolicy()), lfuAlone = SimulatedCache(policy: LFUPolicy())
        for k in Self.hotAmongScans(300) {
            _ = real.use(k, capacity: 2); _ = lruAlone.use(k, capacity: 2); _ = lfuAlone.use(k, capacity: 2)
        }
        // LFU breaks its first tie (the hot expert and a scan, one use each) by recency and loses the
        // hot expert once; from its third use on it keeps it.
        #expect(lruAlone.hits == 0)
        #expect(lfuAlone.hits == 98)
        #expect(real.policy.secondLeads && real.policy.leader == "lfu")
        #expect(real.policy.advantage == 8)
        // The simulations ran the same stream at the size learned from the real cache's evictions.
        #expect(real.policy.simulatedHits == (first: 0, second: 98, uses: 300))
        // The lead changes at the first use the simulations disagree on (the hot expert's third use,
        // which the real cache, evicting as LRU until then, misses); from then on it keeps it as LFU does.
        #expect(real.hits == 97)
    }

    @Test func aTieKeepsTheFirstAndTheLeadComesBackWhenTheStreamChanges() {
        var real = SimulatedCache(policy: Duel(LRUPolicy(), LFUPolicy(), limit: 8))
        // Before the real cache evicts, the simulations are unbounded and agree: the first leads.
        _ = real.use(key(0, 1), capacity: 2); _ = real.use(key(0, 2), capacity: 2); _ = real.use(key(0, 1), capacity: 2)
        #expect(real.policy.advantage == 0 && !real.policy.secondLeads && real.policy.leader == "lru")
        #expect(real.policy.victim(among: [key(0, 1), key(0, 2)]) == key(0, 2))  // LRU's choice
        for k in Self.hotAmongScans(300) { _ = real.use(k, capacity: 2) }
        #expect(real.policy.secondLeads)
        // Now two new experts take turns: LFU keeps the old hot one (its count is far ahead) and
        // the two evict each other; LRU keeps both. Eight uses where only LRU hits hand it the lead.
        var hitsOnceLRULeads = 0, usesOnceLRULeads = 0
        for i in 0..<200 {
            let hit = real.use(key(0, 10 + i % 2), capacity: 2)
            if !real.policy.secondLeads { hitsOnceLRULeads += hit ? 1 : 0; usesOnceLRULeads += 1 }
        }
        #expect(!real.policy.secondLeads)
        #expect(real.policy.advantage == -8)
        #expect(usesOnceLRULeads > 180)
        #expect(hitsOnceLRULeads >= usesOnceLRULeads - 2)
    }

    @Test func theSimulationsSampleEveryOtherLayerWithTheirShareOfTheCache() {
        // Two layers, four experts: layer 0 sees the hot expert among scans, layer 1 only scans.
        var real = SimulatedCache(policy: Duel(LRUPolicy(), LFUPolicy(), limit: 8, sampleStride: 2))
        var lfuOfLayer0 = SimulatedCache(policy: LFUPolicy())
        for (i, k) in Self.hotAmongScans(300).enumerated() {
            _ = real.use(k, capacity: 4)
            _ = lfuOfLayer0.use(k, capacity: 2)
            _ = real.use(key(1, 1000 + i), capacity: 4)
        }
        // Only layer 0 was simulated, at half the real cache, so its simulations are LFU's and LRU's of two experts.
        #expect(real.policy.simulatedHits == (first: 0, second: lfuOfLayer0.hits, uses: 300))
        #expect(real.policy.secondLeads)
        // The same in a model whose MoE layers are every other one: the first layer seen is sampled.
        var odd = Duel(LRUPolicy(), LFUPolicy(), sampleStride: 2)
        for layer in [1, 3, 5] { odd.didInsert(key(layer, 0)); odd.didAccess(key(layer, 0)) }
        #expect(odd.simulatedHits.uses == 2)
    }

    @Test func everyEventReachesBothContenders() {
        var duel = DuelingPolicy(SequenceAwarePolicy(), LRUPolicy())
        duel.sequence(1, routedTo: [0, 1], layer: 0)
        for expert in [0, 1, 2] { duel.didInsert(key(0, expert)); duel.didAccess(key(0, expert)) }
        duel.didAccess(key(0, 0))
        // The sequence-aware policy (leading on the tie) keeps what sequence 1 routed to.
        #expect(duel.victim(among: [key(0, 0), key(0, 1), key(0, 2)]) == key(0, 2))
        duel.sequenceEnded(1)
        #expect(duel.simulatedHits == (first: 1, second: 1, uses: 4))
        #expect(duel.name == "dueling")
    }

    @Test func theSequencePolicyDuelsItsTwoRecencyBonusesUnlessToldOtherwise() {
        let made = PolicyChoice.sequence.make(layerCount: 2, hotPerLayer: 2)
        #expect(made.name == "sequence")
        switch ProcessInfo.processInfo.environment["MOE_LEARNED_RECENCY"] {
        case "off", "on": #expect(made is SequenceAwarePolicy)
        default:
            #expect(made is DuelingPolicy<SequenceAwarePolicy, SequenceAwarePolicy>)
            #expect(made.leader == "fixed_recency")  // a tie keeps the fixed bonus
        }
    }
}
