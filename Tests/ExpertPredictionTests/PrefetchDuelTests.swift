import ExpertPrediction
import Testing

/// The duel behind `--prefetch auto`, stepped with made-up step times: the schedule of a
/// round, which arm leads after it, and how long the leader then runs alone.
@Suite struct PrefetchDuelTests {
    /// Runs `steps` decode steps of `tokens` tokens; each arm's step takes `seconds(arm)` a token.
    @discardableResult
    static func run(_ duel: inout PrefetchDuel, steps: Int, tokens: Int = 1, seconds: (PrefetchDuel.Arm) -> Double) -> [PrefetchDuel.Arm] {
        var arms: [PrefetchDuel.Arm] = []
        for _ in 0..<steps {
            let arm = duel.arm
            arms.append(arm)
            duel.record(seconds: seconds(arm) * Double(tokens), tokens: tokens)
        }
        return arms
    }

    /// Steps of the leader alone after the round just finished, each taking `seconds`.
    static func alone(_ duel: inout PrefetchDuel, seconds: Double) -> (steps: Int, arms: Set<PrefetchDuel.Arm>) {
        var steps = 0
        var arms = Set<PrefetchDuel.Arm>()
        while !duel.exploring {
            arms.insert(duel.arm)
            duel.record(seconds: seconds, tokens: 1)
            steps += 1
        }
        return (steps, arms)
    }

    /// Blocks of exactly `blockSteps` steps whatever the steps' times: the schedule in steps.
    static let stepwise: PrefetchDuel.Settings = {
        var settings = PrefetchDuel.Settings()
        settings.minBlockSeconds = 0
        settings.warmupSeconds = 0
        return settings
    }()
    static var roundSteps: Int { 2 * stepwise.pairsPerRound * stepwise.blockSteps }

    @Test func aRoundAlternatesBlocksInABBAOrderFromTheLeader() {
        var duel = PrefetchDuel(settings: Self.stepwise)
        #expect(duel.exploring && duel.leader == .on)
        let arms = Self.run(&duel, steps: Self.roundSteps) { _ in 0.01 }
        let blocks = stride(from: 0, to: arms.count, by: Self.stepwise.blockSteps).map { arms[$0] }
        #expect(blocks == [.on, .off, .off, .on, .on, .off, .off, .on])
        // Every step of a block runs the block's arm.
        for (index, arm) in arms.enumerated() { #expect(arm == blocks[index / Self.stepwise.blockSteps]) }
        #expect(duel.stepsOn == Self.roundSteps / 2 && duel.stepsOff == Self.roundSteps / 2)
        #expect(duel.rounds == 1 && !duel.exploring)
    }

    @Test func blocksLastAtLeastTheirSecondsAndWarmUpForTheirs() {
        // Steps of 1/64 s: a block of at least 0.3 s is 20 steps (more than the 8 it needs at
        // least), and its steps that start before 0.1 s of it has passed (the first 7) are not timed.
        var duel = PrefetchDuel()
        var arms: [PrefetchDuel.Arm] = []
        while duel.rounds == 0 {
            let arm = duel.arm
            // In prefetching blocks the seventh step stalls for a second (the other arm's reads
            // still draining): past the two warm-up steps, but inside the warm-up's 0.1 s, so
            // untimed; it also ends that block's 0.3 s at once, so the block stops at 8 steps.
            let stepInBlock = arms.reversed().prefix { $0 == arm }.count % (arm == .on ? 8 : 20)
            arms.append(arm)
            duel.record(seconds: arm == .on && stepInBlock == 6 ? 1.0 : 1.0 / 64, tokens: 1)
        }
        #expect(arms == [PrefetchDuel.Arm.on, .off, .off, .on, .on, .off, .off, .on].flatMap { arm -> [PrefetchDuel.Arm] in
            Array(repeating: arm, count: arm == .on ? 8 : 20)
        })
        // The stall was never timed: both arms' timed steps took 1/64 s.
        #expect(duel.leader == .on && duel.lastRound?.medianRatio == 1)
    }

    @Test func theFasterArmLeadsAndRunsAloneUntilTheNextRound() {
        var duel = PrefetchDuel(settings: Self.stepwise)
        Self.run(&duel, steps: Self.roundSteps) { $0 == .on ? 0.012 : 0.010 }
        #expect(duel.leader == .off)
        let round = try! #require(duel.lastRound)
        #expect(round.pairRatios.count == Self.stepwise.pairsPerRound)
        #expect(abs(round.medianRatio - 1.2) < 1e-9)
        // The changed leader runs alone for twice the round's 0.704 s (about 141 steps of 10 ms),
        // then a round begins, its blocks in ABBA order from the new leader.
        let alone = Self.alone(&duel, seconds: 0.010)
        #expect(alone.arms == [.off] && (140...141).contains(alone.steps))
        #expect(duel.exploring && duel.arm == .off)
        Self.run(&duel, steps: Self.stepwise.blockSteps) { $0 == .on ? 0.012 : 0.010 }
        #expect(duel.arm == .on)
    }

    @Test func eachConfirmationDoublesTheLeadersRunUpToTheCap() {
        var duel = PrefetchDuel(settings: Self.stepwise)
        var runs: [Int] = []
        // Steps of 1/128 s, so that the sums are exact: a round of 64 steps is 0.5 s.
        for _ in 0..<7 {
            Self.run(&duel, steps: Self.roundSteps) { $0 == .on ? 1.0 / 128 : 1.25 / 128 }
            #expect(duel.leader == .on && !duel.exploring)
            let alone = Self.alone(&duel, seconds: 1.0 / 128)
            #expect(alone.arms == [.on])
            runs.append(alone.steps)
        }
        // The round took 32 steps of each arm: 0.5625 s; alone 2, 4, … 32 times that.
        #expect(runs == [2, 4, 8, 16, 32, 32, 32].map { Int(($0 * 0.5625 * 128).rounded(.up)) })
    }

    @Test func aChangeOfDiskMovesTheLeadBackAndRestartsTheShortRun() {
        var duel = PrefetchDuel(settings: Self.stepwise)
        // Three rounds where prefetching costs (a throttled disk)...
        var alone: [Int] = []
        for _ in 0..<3 {
            Self.run(&duel, steps: Self.roundSteps) { $0 == .on ? 0.012 : 0.010 }
            alone.append(Self.alone(&duel, seconds: 0.010).steps)
        }
        #expect(duel.leader == .off)
        #expect(alone[1] > alone[0] && alone[2] > alone[1])
        // ...then a disk where it pays: the next round moves the lead, and the leader's run
        // alone is short again.
        Self.run(&duel, steps: Self.roundSteps) { $0 == .on ? 0.008 : 0.010 }
        #expect(duel.leader == .on)
        let after = Self.alone(&duel, seconds: 0.008)
        #expect(after.arms == [.on] && after.steps < alone[2])
    }

    @Test func differencesInsideTheMarginKeepTheLeader() {
        for leader in [PrefetchDuel.Arm.on, .off] {
            var duel = PrefetchDuel(settings: Self.stepwise, initialLeader: leader)
            // The leader 1% slower: noise between equal arms, not a reason to switch.
            Self.run(&duel, steps: Self.roundSteps) { $0 == leader ? 0.0101 : 0.0100 }
            #expect(duel.leader == leader)
            #expect(duel.lastRound.map { abs($0.medianRatio - (leader == .on ? 1.01 : 1 / 1.01)) < 1e-9 } == true)
        }
    }

    @Test func theLeadMovesOnlyWhenMostPairsAgree() {
        // Pair ratios 1.30, 1.20, 0.90, 0.95 (on ÷ off): the median (1.05) favours off, but only
        // two pairs of four do; the leader stays. With a third pair agreeing, it moves.
        for (ratios, moves) in [([1.30, 1.20, 0.90, 0.95], false), ([1.30, 1.20, 1.10, 0.95], true)] {
            var duel = PrefetchDuel(settings: Self.stepwise)
            for step in 0..<Self.roundSteps {
                let pair = step / (2 * Self.stepwise.blockSteps)
                duel.record(seconds: duel.arm == .on ? 0.010 * ratios[pair] : 0.010, tokens: 1)
            }
            #expect(duel.leader == (moves ? .off : .on), "\(ratios)")
            #expect(duel.lastRound.map { $0.pairRatios.count == 4 } == true)
        }
    }

    @Test func warmupStepsAreNotTimed() {
        var duel = PrefetchDuel(settings: Self.stepwise)
        for step in 0..<Self.roundSteps {
            // Each block's first steps pay for the switch (the other arm's reads still running):
            // slow for whichever arm, and so ignored; after them prefetching is faster.
            let warm = step % Self.stepwise.blockSteps < Self.stepwise.warmupSteps
            duel.record(seconds: warm ? 1.0 : (duel.arm == .on ? 0.008 : 0.010), tokens: 1)
        }
        #expect(duel.leader == .on)
        #expect(duel.lastRound.map { abs($0.medianRatio - 0.8) < 1e-9 } == true)
    }

    @Test func timesArePerTokenSoStepsOfOneBatchCompare() {
        var duel = PrefetchDuel(settings: Self.stepwise)
        // Eight sequences a step: on takes 16 ms a step, off 20 ms; per token 2 against 2.5 ms.
        Self.run(&duel, steps: Self.roundSteps, tokens: 8) { $0 == .on ? 0.002 : 0.0025 }
        #expect(duel.leader == .on)
        #expect(duel.lastRound.map { abs($0.medianRatio - 0.8) < 1e-9 } == true)
    }

    @Test func pairsWhoseBatchSizesDifferAreNotCompared() {
        var duel = PrefetchDuel(settings: Self.stepwise)
        // The load changes with the arm (8 sequences while prefetching, 1 without): a step of 8
        // says nothing about a step of 1, so no pair is compared and the leader stays, however
        // much faster off looks per token.
        for _ in 0..<Self.roundSteps {
            let on = duel.arm == .on
            duel.record(seconds: on ? 0.016 : 0.001, tokens: on ? 8 : 1)
        }
        #expect(duel.leader == .on)
        #expect(duel.lastRound?.pairRatios == [])
    }

    @Test func blocksOfMixedBatchesCompareSizeBySize() {
        // One or two users: steps of 1 and 2 sequences, prefetching blocks mostly of 2 and the
        // others mostly of 1. Per token the mix makes prefetch look faster (two tokens a step);
        // size by size it is 10% slower, and off takes the lead.
        var duel = PrefetchDuel(settings: Self.stepwise)
        var step = 0
        for _ in 0..<Self.roundSteps {
            let on = duel.arm == .on
            let tokens = on ? (step % 4 == 3 ? 1 : 2) : (step % 4 == 3 ? 2 : 1)
            let seconds = (tokens == 1 ? 0.010 : 0.016) * (on ? 1.1 : 1.0)
            duel.record(seconds: seconds, tokens: tokens)
            step += 1
        }
        #expect(duel.leader == .off)
        #expect(duel.lastRound.map { round in round.pairRatios.allSatisfy { abs($0 - 1.1) < 1e-9 } } == true)
    }

    @Test func theMedianPairDecidesNotOneOutlier() {
        var duel = PrefetchDuel(settings: Self.stepwise)
        for step in 0..<Self.roundSteps {
            // Off is faster in three pairs; in the first pair a stall (another process's reads)
            // makes off's block far slower.
            let block = step / Self.stepwise.blockSteps
            duel.record(seconds: duel.arm == .on ? 0.011 : (block == 1 ? 0.100 : 0.010), tokens: 1)
        }
        #expect(duel.leader == .off)
    }

    @Test func stepsTooShortToMeasureStillEndTheirBlocks() {
        // Steps of no measurable time: a block ends at its step cap, so rounds still finish.
        var duel = PrefetchDuel()
        Self.run(&duel, steps: 2 * duel.settings.pairsPerRound * duel.settings.maxBlockSteps) { _ in 0 }
        #expect(duel.rounds == 1)
    }
}
