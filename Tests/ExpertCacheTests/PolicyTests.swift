import Foundation
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

/// `LearnedPolicy`: hand-computed evidence, the backoff and the prior.
@Suite struct LearnedPolicyTests {
    /// With no evidence every expert is scored log2(age): LRU's order.
    @Test func coldTableEvictsLeastRecentlyUsed() {
        var policy = LearnedPolicy()
        for k in [a, b, c] { policy.didInsert(k); policy.didAccess(k) }   // t = 1, 2, 3
        policy.didAccess(a)                                                // t = 4
        #expect(policy.score(b) == log2(2) - 1e-9 * policy.lrfuValue(b))
        #expect(policy.victim(among: [a, b, c]) == b)
    }

    /// A gap of g teaches every age bucket 2^j < g that the expert was g − 2^j away; a later
    /// expert of the same class at that age is scored with that mean.
    @Test func aReturnTeachesTheAgesItPassed() {
        var parameters = LearnedPolicy.Parameters()
        parameters.minimumEvidence = 1
        parameters.decay = 1
        var policy = LearnedPolicy(parameters: parameters)
        policy.didInsert(a); policy.didAccess(a)   // t = 1: a's classes (1, 1)
        for k in [b, c, d] { policy.didInsert(k); policy.didAccess(k) } // t = 2, 3, 4
        policy.didAccess(a)                        // t = 5: gap 4 → age 1 saw 3 more, age 2 saw 2 more
        // b (t = 2, classes (1, 1)) at t = 5 is 3 old: bucket 1 (ages 2-3), learned log2(2) = 1.
        #expect(abs(policy.score(b) - 1) < 1e-6)
        // d (t = 4) at t = 5 is 1 old: bucket 0, learned log2(3).
        #expect(abs(policy.score(d) - log2(3)) < 1e-6)
        // So d, expected back later, goes before b, although b is older (LRU would take b).
        #expect(policy.victim(among: [b, d]) == d)
    }

    /// Cells keep evidence per class: an expert of a class that has never come back at this age
    /// falls back to the short-run class, then to the age alone.
    @Test func unseenClassesBackOffToCoarserCells() {
        var parameters = LearnedPolicy.Parameters()
        parameters.minimumEvidence = 1
        parameters.decay = 1
        var policy = LearnedPolicy(parameters: parameters)
        policy.didInsert(a); policy.didAccess(a)   // t = 1
        policy.didInsert(b); policy.didAccess(b)   // t = 2
        policy.didAccess(a)                        // t = 3: gap 2, bucket 0 learns log2(1) = 0 for class (1, 1)
        policy.didAccess(a)                        // t = 4: gap 1, nothing learned; a's classes now (2, 2)
        // a is 1 old with classes (2, 2): no cell of its own or of short class 2; age bucket 0 says 0.
        #expect(abs(policy.score(a) - 0) < 1e-6)
        // b is 2 old (bucket 1): nothing learned there; the prior log2(2) = 1.
        #expect(abs(policy.score(b) - 1) < 1e-6)
        #expect(policy.victim(among: [a, b]) == b)
    }

    /// An insertion without a use (a prefetch) is not a use: the interval from it to the first
    /// use teaches nothing, while the same interval from a use does.
    @Test func prefetchedInsertionsTeachNothing() {
        var parameters = LearnedPolicy.Parameters()
        parameters.minimumEvidence = 1
        parameters.decay = 1
        func scoreOfB(prefetchFirst: Bool) -> Double {
            var policy = LearnedPolicy(parameters: parameters)
            policy.didInsert(a); policy.didAccess(a)                  // t = 1
            policy.didInsert(c)                                       // c read (its age starts now) ...
            if !prefetchFirst { policy.didAccess(c) }                 // ... and used at t = 2, or not used
            policy.didInsert(b); policy.didAccess(b)                  // b used (t = 2, or 3)
            policy.didAccess(a); policy.didAccess(a)                  // a's gaps: 2 then 1 (or 3 then 1)
            policy.didAccess(c)                                       // c used: its first use, or a gap of 4
            return policy.score(b)
        }
        // Prefetched: now t = 5, b is 3 old (bucket 1); only a's gap of 2 taught anything, and only
        // bucket 0, so b gets the prior log2(3).
        #expect(abs(scoreOfB(prefetchFirst: true) - log2(3)) < 1e-6)
        // Used: now t = 6, b is 3 old; bucket 1 of class (1, 1) learned a's 3 − 2 → log2 1 = 0 and
        // c's 4 − 2 → log2 2 = 1: the mean, 0.5.
        #expect(abs(scoreOfB(prefetchFirst: false) - 0.5) < 1e-6)
    }

    @Test func sameEventsSameVictims() {
        func replay() -> [ExpertKey] {
            var policy = LearnedPolicy()
            var victims: [ExpertKey] = []
            var state: UInt64 = 42
            for _ in 0..<2000 {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                let k = key(Int(state >> 60) % 2, Int(state >> 33) % 8)
                policy.didInsert(k); policy.didAccess(k)
                victims.append(policy.victim(among: (0..<8).map { key(Int(state >> 60) % 2, $0) }))
            }
            return victims
        }
        #expect(replay() == replay())
    }

    @Test func selectableByName() {
        #expect(PolicyChoice(rawValue: "learned") == .learned)
        #expect(PolicyChoice.learned.make(layerCount: 4, hotPerLayer: 2).name == "learned")
    }
}

@Suite struct SequenceAwarePolicyTests {
    /// Recency off and no decay of the long-run counts: only shares and sequence counts matter.
    static func parameters(priorWeight: Double = 4, recencyWeight: Double = 0) -> SequenceAwarePolicy.Parameters {
        var parameters = SequenceAwarePolicy.Parameters()
        parameters.priorWeight = priorWeight
        parameters.recencyWeight = recencyWeight
        parameters.longHalfLife = 1e15
        return parameters
    }

    /// With equal chances, the expert of the layer that just ran waits longest for its next use
    /// (a whole token), one of the next layer least; a much likelier expert still stays.
    @Test func theLayerThatJustRanWaitsLongestForItsNextUse() {
        let a = ExpertKey(layer: 0, expert: 0), b = ExpertKey(layer: 1, expert: 0), c = ExpertKey(layer: 1, expert: 1)
        var parameters = SequenceAwarePolicy.Parameters()
        #expect(parameters.layerDistance)  // the default
        // The runtime's and the replay's parameters: on unless MOE_LAYER_DISTANCE=off.
        #expect(SequenceAwarePolicy.Parameters.fromEnvironment([:]) == parameters)
        #expect(!SequenceAwarePolicy.Parameters.fromEnvironment(["MOE_LAYER_DISTANCE": "off"]).layerDistance)
        var withDistance = SequenceAwarePolicy(parameters: parameters)
        parameters.layerDistance = false
        var chanceOnly = SequenceAwarePolicy(parameters: parameters)
        for key in [a, b] { withDistance.didInsert(key); withDistance.didAccess(key); chanceOnly.didInsert(key); chanceOnly.didAccess(key) }
        // Both are their layer's only expert, used once, just now: the same score.
        #expect(withDistance.score(a) == withDistance.score(b))
        #expect(withDistance.victim(among: [a, b]) == b)   // layer 1 just ran; layer 0 runs next
        #expect(chanceOnly.victim(among: [a, b]) == a)     // a tie, broken by key
        withDistance.didAccess(a)                          // now layer 0 runs: layer 1 is next
        #expect(withDistance.victim(among: [a, b]) == a)
        // A quarter of layer 1's uses against all of layer 0's: the chance outweighs the wait.
        for _ in 0..<2 { withDistance.didAccess(b) }
        withDistance.didInsert(c); withDistance.didAccess(c)
        for _ in 0..<2 { withDistance.didAccess(a) }
        #expect(withDistance.victim(among: [a, c]) == c)
    }

    /// Counted per step of S sequences, 1 − (1 − P)^S, a likely expert of the layer that just
    /// ran goes before a less likely one of the next layer: a step of many sequences will run
    /// both, and the next layer's runs first. Per token (one sequence) the chance decides.
    @Test func manySequencesRankByTheWaitForTheirLayer() {
        let a = ExpertKey(layer: 0, expert: 0), a2 = ExpertKey(layer: 0, expert: 1)
        let c = ExpertKey(layer: 1, expert: 0)
        var perStep = SequenceAwarePolicy(parameters: Self.parameters())
        #expect(perStep.parameters.perStepChance)   // the default
        #expect(!SequenceAwarePolicy.Parameters.fromEnvironment(["MOE_STEP_CHANCE": "off"]).perStepChance)
        var parameters = Self.parameters()
        parameters.perStepChance = false
        var perToken = SequenceAwarePolicy(parameters: parameters)
        // Layer 1: c one of four experts used once each (P 0.25); layer 0, which ran last: a one
        // of two used twice each (P 0.5).
        let uses = [c, ExpertKey(layer: 1, expert: 1), ExpertKey(layer: 1, expert: 2), ExpertKey(layer: 1, expert: 3), a, a2, a, a2]
        for key in uses {
            perStep.didInsert(key); perStep.didAccess(key)
            perToken.didInsert(key); perToken.didAccess(key)
        }
        // One sequence: a waits 2 + 2·(1/0.5 − 1) = 4 layer runs, c 1 + 2·(1/0.25 − 1) = 7.
        #expect(perStep.victim(among: [a, c]) == c)
        // Sixteen sequences running (their routing reported for a layer of its own, so the
        // experts' scores stay as they were): both are all but certain to run next step.
        for sequence in 0..<16 {
            perStep.sequence(sequence, routedTo: [0], layer: 7)
            perToken.sequence(sequence, routedTo: [0], layer: 7)
        }
        #expect(perStep.score(a) == perToken.score(a) && perStep.score(c) == perToken.score(c))
        #expect(perStep.victim(among: [a, c]) == a)
        #expect(perToken.victim(among: [a, c]) == c)
    }

    /// Without sequence reports the score is each expert's share of its layer's references.
    @Test func withoutSequencesItKeepsTheLayersPopularExperts() {
        var policy = SequenceAwarePolicy(parameters: Self.parameters())
        for k in [a, b, a, a] { policy.didInsert(k); policy.didAccess(k) }  // a 3 of 4 references, b 1
        #expect(abs(policy.score(a) - 0.75) < 1e-9)
        #expect(abs(policy.score(b) - 0.25) < 1e-9)
        #expect(policy.victim(among: [a, b]) == b)
        // An expert never used scores 0 and goes first.
        policy.didInsert(c)
        #expect(policy.victim(among: [a, b, c]) == c)
    }

    /// A running sequence's own routing outweighs the long-run shares once it has evidence, and
    /// is forgotten when the sequence ends.
    @Test func aRunningSequencesRoutingOutweighsPopularityUntilItEnds() {
        var policy = SequenceAwarePolicy(parameters: Self.parameters(priorWeight: 4))
        for k in [a, b, a, a] { policy.didInsert(k); policy.didAccess(k) }
        policy.sequence(7, routedTo: [b.expert], layer: 0)
        policy.sequence(7, routedTo: [b.expert, c.expert], layer: 0)
        policy.sequence(7, routedTo: [b.expert], layer: 0)
        policy.sequence(7, routedTo: [b.expert], layer: 1)    // another layer's counts stay apart
        #expect(policy.runningSequences == 1)
        #expect(policy.sequenceReferences(layer: 0) == 4)
        // a: (0 + 4·0.75) / (4 + 4) = 0.375; b: (3 + 4·0.25) / 8 = 0.5; c: (1 + 0) / 8 = 0.125.
        #expect(abs(policy.score(a) - 0.375) < 1e-9)
        #expect(abs(policy.score(b) - 0.5) < 1e-9)
        #expect(abs(policy.score(c) - 0.125) < 1e-9)
        #expect(policy.victim(among: [a, b]) == a)
        policy.sequenceEnded(7)
        #expect(policy.runningSequences == 0)
        #expect(policy.sequenceReferences(layer: 0) == 0 && policy.sequenceReferences(layer: 1) == 0)
        #expect(abs(policy.score(b) - 0.25) < 1e-9)
        #expect(policy.victim(among: [a, b]) == b)
    }

    /// Two sequences' counts add up; ending one takes back only its own.
    @Test func endingOneSequenceKeepsTheOthers() {
        var policy = SequenceAwarePolicy(parameters: Self.parameters(priorWeight: 4))
        policy.sequence(1, routedTo: [0, 1], layer: 0)
        policy.sequence(2, routedTo: [1, 2], layer: 0)
        policy.sequence(2, routedTo: [2], layer: 0)
        #expect(policy.runningSequences == 2)
        // No long-run references yet: the score is local / (local total + prior weight).
        #expect(abs(policy.score(b) - 2.0 / 9) < 1e-9)
        policy.sequenceEnded(2)
        #expect(policy.runningSequences == 1 && policy.sequenceReferences(layer: 0) == 2)
        #expect(abs(policy.score(b) - 1.0 / 6) < 1e-9)
        #expect(abs(policy.score(c) - 0) < 1e-9)
        policy.sequenceEnded(2)    // twice: nothing more to take back
        #expect(policy.sequenceReferences(layer: 0) == 2)
    }

    /// The recency bonus halves every `recencyHalfLife` references of the layer; an insertion
    /// restarts it (a read expert is not the first thing evicted), and a use counts too.
    @Test func recencyFavoursWhatWasJustUsedOrRead() {
        var parameters = Self.parameters(recencyWeight: 1)
        parameters.recencyHalfLife = 1
        var policy = SequenceAwarePolicy(parameters: parameters)
        policy.didInsert(a); policy.didAccess(a)   // clock 1
        policy.didInsert(b); policy.didAccess(b)   // clock 2
        // a: share 0.5 + 2^-1; b: 0.5 + 2^0.
        #expect(abs(policy.score(a) - 1.0) < 1e-9)
        #expect(abs(policy.score(b) - 1.5) < 1e-9)
        #expect(policy.victim(among: [a, b]) == a)
        policy.didInsert(c)                        // a prefetch at clock 2: share 0, bonus 1
        #expect(abs(policy.score(c) - 1.0) < 1e-9)
        #expect(policy.victim(among: [a, c]) == a) // equal scores: the lower key
    }

    /// One long sequence on layer 0: expert 0 every token; a "pair" expert (1…6 in turn) on two
    /// consecutive tokens, so each is used on 1 token in 6 and, the token after a first use, again
    /// half the time; expert 9 every third token (1 in 3), never sooner. Right after the first
    /// token of a pair, with 9 two tokens old, popularity alone keeps 9 (twice as popular);
    /// the measured recency table knows the pair expert comes back half the time at age 1 and
    /// that 9 never comes back at age 2, so it keeps the pair expert.
    @Test func aMeasuredRecencyBonusKeepsWhatTheStreamReusesNext() {
        let lastToken = 640   // the first of a pair, the token after one of 9's
        /// `reportsFirst`: the runtime's order (the router reports a token before its experts are
        /// used); otherwise the trace replay's (after).
        func run(learnsRecency: Bool, reportsFirst: Bool = false) -> SequenceAwarePolicy {
            var parameters = SequenceAwarePolicy.Parameters()
            parameters.learnsRecency = learnsRecency
            var policy = SequenceAwarePolicy(parameters: parameters)
            for token in 0...lastToken {
                var routed = [0, 1 + (token / 2) % 6]
                if token % 3 == 0 { routed.append(9) }
                if reportsFirst { policy.sequence(1, routedTo: routed, layer: 0) }
                for expert in routed {
                    let key = ExpertKey(layer: 0, expert: expert)
                    policy.didInsert(key); policy.didAccess(key)
                }
                if !reportsFirst { policy.sequence(1, routedTo: routed, layer: 0) }
            }
            return policy
        }
        let pairExpert = ExpertKey(layer: 0, expert: 1 + (lastToken / 2) % 6), everyThird = ExpertKey(layer: 0, expert: 9)
        #expect(run(learnsRecency: false).victim(among: [pairExpert, everyThird]) == pairExpert)
        let learned = run(learnsRecency: true)
        #expect(learned.victim(among: [pairExpert, everyThird]) == everyThird)
        // In per-token terms: the pair expert about half (its measured rate at age 1), 9 about none.
        let perToken = Double(2 * (lastToken + 1) + lastToken / 3 + 1) / Double(lastToken + 1)
        #expect(abs(learned.estimate(everyThird) * perToken - 1.0 / 3) < 0.01)
        #expect(abs(learned.score(pairExpert) * perToken - 0.5) < 0.1)
        #expect(learned.score(everyThird) * perToken < 0.05)
        // The runtime's order measures and reads the same ages. It evicts while a token's uses
        // run, after that token's report: compare there (the replay evicts before the report).
        var reportsFirst = run(learnsRecency: true, reportsFirst: true)
        let next = lastToken + 1
        reportsFirst.sequence(1, routedTo: [0, 1 + (next / 2) % 6] + (next % 3 == 0 ? [9] : []), layer: 0)
        #expect(reportsFirst.victim(among: [pairExpert, everyThird]) == everyThird)
        #expect(abs(reportsFirst.score(pairExpert) - learned.score(pairExpert)) * perToken < 0.02)
        #expect(abs(reportsFirst.score(everyThird) - learned.score(everyThird)) * perToken < 0.02)
        // A prefetch not used yet keeps the fixed bonus on top of its estimate.
        var prefetched = learned
        let fresh = ExpertKey(layer: 0, expert: 7)
        prefetched.didInsert(fresh)
        #expect(abs(prefetched.score(fresh) - (prefetched.estimate(fresh) + SequenceAwarePolicy.Parameters().recencyWeight)) < 1e-12)
    }
}

extension SequenceAwarePolicyTests {
    /// Two layers with the same periodic routing, fed in the runtime's order and in the
    /// replay's, compared where both can evict. The runtime uses a layer's resident experts as
    /// it pins them, then reports the layer's step, then uses the experts that missed (here layer
    /// 1's first expert is used before its report, while layer 0 still runs, and the step does not
    /// use it again). The replay uses a step's experts, then reports it. The measured table must
    /// read the same ages in both: during layer 1's step (layer 0's is done, layer 1's still open;
    /// the expert used early, which the replay holds pinned, aside) and once the next step has
    /// begun, in steps of one row and of three.
    @Test(arguments: [1, 3])
    func theRuntimesOrderReadsTheSameAgesAsTheReplay(rowsPerStep: Int) {
        func routedToken(_ token: Int) -> [Int] { [0, 1 + (token / 2) % 6] + (token % 3 == 0 ? [9] : []) }
        func rows(_ step: Int) -> [[Int]] { (0..<rowsPerStep).map { routedToken(step * rowsPerStep + $0) } }
        func union(_ step: Int) -> [Int] { TraceReplay.distinct(rows(step).flatMap { $0 }) }
        func use(_ policy: inout SequenceAwarePolicy, _ experts: [Int], layer: Int) {
            for expert in experts {
                let key = ExpertKey(layer: layer, expert: expert)
                policy.didInsert(key); policy.didAccess(key)
            }
        }
        func report(_ policy: inout SequenceAwarePolicy, step: Int, layer: Int) {
            for (row, experts) in rows(step).enumerated() { policy.sequence(row + 1, routedTo: experts, layer: layer) }
        }
        var parameters = SequenceAwarePolicy.Parameters()
        parameters.learnsRecency = true
        var runtime = SequenceAwarePolicy(parameters: parameters), replay = SequenceAwarePolicy(parameters: parameters)
        let lastStep = 640 / rowsPerStep
        let keys = (0..<2).flatMap { layer in [0, 1, 2, 3, 4, 5, 6, 9].map { ExpertKey(layer: layer, expert: $0) } }
        func expectSameScores(_ point: String, except skipped: ExpertKey? = nil) {
            for key in keys where key != skipped {
                // The runtime's estimate already counts a report the replay has not had: a small difference.
                #expect(abs(runtime.score(key) - replay.score(key)) * 2.4 < 0.03, "\(point): \(key)")
            }
        }
        for step in 0...lastStep {
            let shadowed = union(step)[0]
            report(&runtime, step: step, layer: 0)
            use(&runtime, [shadowed], layer: 1)            // layer 1's resident expert, used before its report
            use(&runtime, union(step), layer: 0)
            report(&runtime, step: step, layer: 1)
            use(&replay, union(step), layer: 0)
            report(&replay, step: step, layer: 0)
            use(&replay, [shadowed], layer: 1)
            if step == lastStep { expectSameScores("during layer 1's step", except: ExpertKey(layer: 1, expert: shadowed)) }
            use(&runtime, Array(union(step).dropFirst()), layer: 1)
            use(&replay, Array(union(step).dropFirst()), layer: 1)
            report(&replay, step: step, layer: 1)
        }
        // The runtime learns that layer 1's step is over when the next step reports layer 0.
        report(&runtime, step: lastStep + 1, layer: 0)
        expectSameScores("as the next step begins")
    }
}

@Suite struct RecencyCalibrationTests {
    @Test func agesAreCountedOneByOneThenInDoublings() {
        #expect((0...9).map(RecencyCalibration.ageBucket) == [0, 1, 2, 3, 4, 4, 4, 4, 5, 5])
        #expect(RecencyCalibration.ages(of: 3) == (3, 4) && RecencyCalibration.ages(of: 5) == (8, 16))
        #expect(RecencyCalibration.ageBucket(1 << 40) == RecencyCalibration.ageBuckets - 1)
        #expect(RecencyCalibration.ages(of: RecencyCalibration.ageBuckets - 1).upper == Int.max)
        // log2 classes of the per-token estimate; nothing and the tiniest share the lowest.
        #expect(RecencyCalibration.estimateClass(1) == 7 && RecencyCalibration.estimateClass(0.5) == 7)
        #expect(RecencyCalibration.estimateClass(0.25) == 6 && RecencyCalibration.estimateClass(0.2) == 5)
        #expect(RecencyCalibration.estimateClass(0) == 0 && RecencyCalibration.estimateClass(1e-9) == 0)
    }

    /// Hand-computed residuals: (uses − Σ estimate) / exposures, shrunk by exposures / (exposures + 20).
    @Test func theBonusIsTheUseRateTheEstimateMissed() {
        var table = RecencyCalibration()
        table.recordUse(age: 1, estimate: 0.25)
        table.recordUse(age: 1, estimate: 0.25)
        table.refresh(open: [], decay: 1)
        // Age 1, class of 0.25: 2 uses in 2 exposures, 0.5 expected.
        #expect(abs(table.bonus(age: 1, estimate: 0.25) - 0.75 * 2 / 22) < 1e-12)
        #expect(table.bonus(age: 1, estimate: 0.9) == 0)   // another class: no evidence
        // An expert 3 tokens old, not used since: exposures at ages 1 and 2 without a use.
        table.refresh(open: [(age: 3, estimate: 0.25)], decay: 1)
        #expect(abs(table.bonus(age: 1, estimate: 0.25) - (2 - 0.75) / 3 * 3 / 23) < 1e-12)
        #expect(abs(table.bonus(age: 2, estimate: 0.25) - (0 - 0.25) / 1 * 1 / 21) < 1e-12)
        // A use at age 5: exposures at 1, 2, 3 and two in [4, 8), the use in [4, 8).
        var other = RecencyCalibration()
        other.recordUse(age: 5, estimate: 0.25)
        other.refresh(open: [], decay: 0.5)
        #expect(abs(other.bonus(age: 3, estimate: 0.25) - (-0.25) / 21) < 1e-12)
        #expect(abs(other.bonus(age: 6, estimate: 0.25) - (1 - 0.5) / 2 * 2 / 22) < 1e-12)
        // The refresh decayed the evidence by half: the same residual, less sure.
        other.refresh(open: [], decay: 1)
        #expect(abs(other.bonus(age: 6, estimate: 0.25) - (0.5 - 0.25) / 1 * 1 / 21) < 1e-12)
    }
}
