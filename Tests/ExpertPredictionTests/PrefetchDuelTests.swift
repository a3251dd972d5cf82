import ExpertPrediction
import Testing

/// The duel behind `--prefetch auto`, stepped with made-up step times: the schedule of a
/// round, which arm leads after it, and how long the leader then runs alone.
@Suite struct PrefetchDuelTests {
    /// Runs `steps` decode steps of `tokens` tokens; each arm's step takes `seconds(arm)`.
    static func run(_ duel: inout PrefetchDuel, steps: Int, tokens: Int = 1, seconds: (PrefetchDuel.Arm) -> Double) -> [PrefetchDuel.Arm] {
        var arms: [PrefetchDuel.Arm] = []
        for _ in 0..<steps {
            let arm = duel.arm
            arms.append(arm)
            duel.record(seconds: seconds(arm) * Double(tokens), tokens: tokens)
        }
        return arms
    }

    static let settings = PrefetchDuel.Settings()
    static var roundSteps: Int { 2 * settings.pairsPerRound * settings.blockSteps }

    @Test func aRoundAlternatesBlocksInABBAOrderFromTheLeader() {
        var duel = PrefetchDuel()
        #expect(duel.exploring && duel.leader == .on)
        let arms = Self.run(&duel, steps: Self.roundSteps) { _ in 0.01 }
        let blocks = stride(from: 0, to: arms.count, by: Self.settings.blockSteps).map { arms[$0] }
        #expect(blocks == [.on, .off, .off, .on, .on, .off, .off, .on])
        // Every step of a block runs the block's arm.
        for (index, arm) in arms.enumerated() { #expect(arm == blocks[index / Self.settings.blockSteps]) }
        #expect(duel.stepsOn == Self.roundSteps / 2 && duel.stepsOff == Self.roundSteps / 2)
        #expect(duel.rounds == 1 && !duel.exploring)
    }

    @Test func theFasterArmLeadsAndRunsAloneUntilTheNextRound() {
        var duel = PrefetchDuel()
        _ = Self.run(&duel, steps: Self.roundSteps) { $0 == .on ? 0.012 : 0.010 }
        #expect(duel.leader == .off)
        let round = try! #require(duel.lastRound)
        #expect(round.pairRatios.count == Self.settings.pairsPerRound)
        #expect(abs(round.medianRatio - 1.2) < 1e-9)
        // The changed leader runs alone for the first exploitation phase, then a round begins,
        // its blocks in ABBA order from the new leader.
        let alone = Self.run(&duel, steps: Self.settings.firstExploitSteps) { $0 == .on ? 0.012 : 0.010 }
        #expect(alone.allSatisfy { $0 == .off })
        #expect(duel.exploring && duel.arm == .off)
        _ = Self.run(&duel, steps: Self.settings.blockSteps) { $0 == .on ? 0.012 : 0.010 }
        #expect(duel.arm == .on)
    }

    @Test func eachConfirmationDoublesTheLeadersRunUpToTheCap() {
        var duel = PrefetchDuel()
        var exploit: [Int] = []
        for _ in 0..<8 {
            _ = Self.run(&duel, steps: Self.roundSteps) { $0 == .on ? 0.008 : 0.010 }
            #expect(duel.leader == .on && !duel.exploring)
            var alone = 0
            while !duel.exploring {
                #expect(duel.arm == .on)
                duel.record(seconds: 0.008, tokens: 1)
                alone += 1
            }
            exploit.append(alone)
        }
        #expect(exploit == [64, 128, 256, 512, 1024, 1024, 1024, 1024])
    }

    @Test func aChangeOfDiskMovesTheLeadBackAndRestartsTheShortPhase() {
        var duel = PrefetchDuel()
        // Three rounds where prefetching costs (a throttled disk)...
        for _ in 0..<3 {
            _ = Self.run(&duel, steps: Self.roundSteps) { $0 == .on ? 0.012 : 0.010 }
            while !duel.exploring { duel.record(seconds: 0.010, tokens: 1) }
        }
        #expect(duel.leader == .off)
        // ...then a disk where it pays: the next round moves the lead, and the leader's run
        // starts again from the first phase's length.
        _ = Self.run(&duel, steps: Self.roundSteps) { $0 == .on ? 0.008 : 0.010 }
        #expect(duel.leader == .on)
        var alone = 0
        while !duel.exploring { duel.record(seconds: 0.008, tokens: 1); alone += 1 }
        #expect(alone == Self.settings.firstExploitSteps)
    }

    @Test func differencesInsideTheMarginKeepTheLeader() {
        for leader in [PrefetchDuel.Arm.on, .off] {
            var duel = PrefetchDuel(initialLeader: leader)
            // The leader 1% slower: noise between equal arms, not a reason to switch.
            _ = Self.run(&duel, steps: Self.roundSteps) { $0 == leader ? 0.0101 : 0.0100 }
            #expect(duel.leader == leader)
            #expect(duel.lastRound.map { abs($0.medianRatio - (leader == .on ? 1.01 : 1 / 1.01)) < 1e-9 } == true)
        }
    }

    @Test func theLeadMovesOnlyWhenMostPairsAgree() {
        // Pair ratios 1.30, 1.20, 0.90, 0.95 (on ÷ off): the median (1.05) favours off, but only
        // two pairs of four do; the leader stays. With a third pair agreeing, it moves.
        for (ratios, moves) in [([1.30, 1.20, 0.90, 0.95], false), ([1.30, 1.20, 1.10, 0.95], true)] {
            var duel = PrefetchDuel()
            var block = 0, step = 0
            for _ in 0..<Self.roundSteps {
                let arm = duel.arm
                duel.record(seconds: arm == .on ? 0.010 * ratios[block / 2] : 0.010, tokens: 1)
                step += 1
                if step == Self.settings.blockSteps { step = 0; block += 1 }
            }
            #expect(duel.leader == (moves ? .off : .on), "\(ratios)")
            #expect(duel.lastRound.map { $0.pairRatios.count == 4 } == true)
        }
    }

    @Test func warmupStepsAreNotTimed() {
        var duel = PrefetchDuel()
        var stepInBlock = 0
        for _ in 0..<Self.roundSteps {
            // Each block's first steps pay for the switch (the other arm's reads still running):
            // slow for whichever arm, and so ignored; after them prefetching is faster.
            let warm = stepInBlock < Self.settings.warmupSteps
            duel.record(seconds: warm ? 1.0 : (duel.arm == .on ? 0.008 : 0.010), tokens: 1)
            stepInBlock = (stepInBlock + 1) % Self.settings.blockSteps
        }
        #expect(duel.leader == .on)
        #expect(duel.lastRound.map { abs($0.medianRatio - 0.8) < 1e-9 } == true)
    }

    @Test func timesArePerTokenSoStepsOfOneBatchCompare() {
        var duel = PrefetchDuel()
        // Eight sequences a step: on takes 16 ms a step, off 20 ms; per token 2 against 2.5 ms.
        _ = Self.run(&duel, steps: Self.roundSteps, tokens: 8) { $0 == .on ? 0.002 : 0.0025 }
        #expect(duel.leader == .on)
        #expect(duel.lastRound.map { abs($0.medianRatio - 0.8) < 1e-9 } == true)
    }

    @Test func pairsWhoseBatchSizesDifferAreNotCompared() {
        var duel = PrefetchDuel()
        // The load changes with the arm (8 sequences while prefetching, 1 without): a time per
        // token from a batch of 8 says nothing about a batch of 1, so no pair is compared and
        // the leader stays, however much faster off looks per token.
        for _ in 0..<Self.roundSteps {
            let on = duel.arm == .on
            duel.record(seconds: on ? 0.016 : 0.001, tokens: on ? 8 : 1)
        }
        #expect(duel.leader == .on)
        #expect(duel.lastRound?.pairRatios == [])
        // Batches of 5 against 4 (within 1.25x) still compare.
        var close = PrefetchDuel()
        for _ in 0..<Self.roundSteps {
            let on = close.arm == .on
            close.record(seconds: on ? 5 * 0.012 : 4 * 0.010, tokens: on ? 5 : 4)
        }
        #expect(close.leader == .off && close.lastRound?.pairRatios.count == Self.settings.pairsPerRound)
    }

    @Test func theMedianPairDecidesNotOneOutlier() {
        var duel = PrefetchDuel()
        var block = 0, step = 0
        for _ in 0..<Self.roundSteps {
            // Off is faster in three pairs; in the first pair a stall (another process's reads)
            // makes off's block far slower.
            let arm = duel.arm
            let seconds = arm == .on ? 0.011 : (block == 1 ? 0.100 : 0.010)
            duel.record(seconds: seconds, tokens: 1)
            step += 1
            if step == Self.settings.blockSteps { step = 0; block += 1 }
        }
        #expect(duel.leader == .off)
    }
}
