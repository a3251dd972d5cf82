import Foundation

/// Whether to prefetch, decided by measuring it (`--prefetch auto`): rounds of decode-step
/// blocks run alternately with and without prefetching, timed, and the faster arm
/// leads until the next round.
///
/// Why: whether prefetching pays depends on the disk, and no setting is right for every disk.
/// On a disk that loses its idle time (a drive, or the emulated disk of one rate) the widened
/// demo decodes 1.11-1.17x faster with prefetch at 1.5 GB/s; under a token-bucket throttle of
/// 600 MB/s (what cloud volumes sell) demand reads burst after idle time, so no guess fills
/// idle time and every wrong one costs: prefetch on ÷ off was 0.86-0.98x for one sequence and
/// 0.92-0.97x for eight (docs/PREDICTOR.md). A server cannot know beforehand which it runs on.
///
/// A round is `pairsPerRound` pairs of blocks, one block of each arm per pair, in the order
/// ABBA ABBA … so that a steady drift in the machine's speed (a cache warming, a neighbour's
/// load) favours neither arm. A block lasts at least `blockSteps` decode steps and at least
/// `minBlockSeconds`; its first steps, at least `warmupSteps` and until `warmupSeconds` have
/// passed, are not timed: a switch leaves the other arm's reads, cache contents and disk
/// credit behind. Why seconds and not only steps: a throttled volume meters reads in slices of
/// about 100 ms (the kernel's blkio throttle), so a block of 8 steps of one sequence (about
/// 110 ms there) paid for the previous block's reads, and rounds of such blocks chose prefetch
/// on where it was 12% slower over the whole run (docs/PREDICTOR.md, session 28).
///
/// Each pair gives a ratio (on ÷ off seconds per step); the lead moves only when the round's
/// median ratio and most pairs favour the other arm past `margin`, so that noise between
/// equal arms does not flip it. The leader then runs alone for `firstExploitRounds` times the
/// round's duration, doubling (up to `maxExploitRounds`) each time a round confirms it, and
/// starting again from `firstExploitRounds` when a round changes it: the other arm's share of
/// decode time falls towards half a round in 33.
///
/// Only decode steps count (one row per sequence); the caller runs other steps (prompt chunks)
/// with the current arm and does not report them. A pair compares like with like: a step's
/// time depends on how many sequences share it, and a server's load changes between blocks, so
/// the pair's ratio is taken per batch size that both blocks ran (seconds per step of that
/// size, on ÷ off) and averaged geometrically, each size weighted by the fewer of its steps in
/// the two blocks. A pair with no batch size in common is left out of the median, and a round
/// with no pair left keeps the leader. Pure state, no clock, no I/O: time is what `record` is
/// told; a step allocates nothing (the end of a round allocates its list of ratios).
public struct PrefetchDuel: Sendable {
    public enum Arm: String, Sendable, Codable { case on, off }

    public struct Settings: Sendable, Equatable {
        /// A block lasts at least this many decode steps...
        public var blockSteps = 8
        /// ...and at least this many seconds of decode steps...
        public var minBlockSeconds = 0.3
        /// ...and at most this many steps, however short they are.
        public var maxBlockSteps = 256
        /// A block's first steps are run but not timed: at least this many...
        public var warmupSteps = 2
        /// ...and until this many seconds of the block have passed.
        public var warmupSeconds = 0.1
        /// Pairs of blocks (one per arm) in a round.
        public var pairsPerRound = 4
        /// After a round that changed (or first chose) the leader, the leader runs alone for
        /// this many times the round's duration...
        public var firstExploitRounds = 2.0
        /// ...doubling with each round that confirms it, up to this many.
        public var maxExploitRounds = 32.0
        /// The lead moves only when the other arm is faster by more than this share.
        public var margin = 0.02
        /// Batch sizes compared apart; larger batches are compared as one size.
        public var batchSizes = 64
        public init() {}
    }

    /// One finished round.
    public struct Round: Sendable, Equatable {
        /// Each compared pair's on ÷ off seconds per step of one batch size, in pair order.
        public var pairRatios: [Double]
        /// Their median: below 1, prefetching was faster (1 when no pair was compared).
        public var medianRatio: Double
        /// The leader the round left.
        public var leader: Arm
    }

    public let settings: Settings
    /// The arm that runs when no round is under way.
    public private(set) var leader: Arm
    /// Rounds finished so far, and the last one.
    public private(set) var rounds = 0
    public private(set) var lastRound: Round?
    /// Decode steps run (reported) with each arm.
    public private(set) var stepsOn = 0
    public private(set) var stepsOff = 0

    private enum Phase: Equatable {
        /// In a round: block `block` of its 2 × pairsPerRound, step `step` of the block,
        /// `elapsed` seconds of the block before it.
        case exploring(block: Int, step: Int, elapsed: Double)
        /// The leader alone for `remaining` more seconds of decode steps.
        case exploiting(remaining: Double)
    }
    private var phase: Phase = .exploring(block: 0, step: 0, elapsed: 0)
    /// Timed steps of the current block, and its timed seconds and steps per batch size; the
    /// same of the first block of the current pair.
    private var blockSteps = 0
    private var current: ByBatchSize
    private var firstOfPair: ByBatchSize
    /// Seconds of decode steps in the current round.
    private var roundSeconds = 0.0
    /// Each pair's on ÷ off ratio in the current round (nil: not compared).
    private var pairRatios: [Double?]

    /// Timed seconds and steps per batch size (index: sequences in the step − 1).
    private struct ByBatchSize {
        var seconds: [Double]
        var steps: [Int]
        init(sizes: Int) {
            seconds = Array(repeating: 0, count: sizes)
            steps = Array(repeating: 0, count: sizes)
        }
        mutating func add(seconds time: Double, tokens: Int) {
            let index = min(tokens, steps.count) - 1
            seconds[index] += time
            steps[index] += 1
        }
        mutating func reset() {
            for index in steps.indices { seconds[index] = 0; steps[index] = 0 }
        }
        /// `self` ÷ `other` seconds per step, over the sizes both ran (nil: none in common).
        func ratio(to other: ByBatchSize) -> Double? {
            var logSum = 0.0, weights = 0
            for index in steps.indices where steps[index] > 0 && other.steps[index] > 0 && other.seconds[index] > 0 && seconds[index] > 0 {
                let weight = min(steps[index], other.steps[index])
                logSum += Double(weight) * Foundation.log((seconds[index] / Double(steps[index])) / (other.seconds[index] / Double(other.steps[index])))
                weights += weight
            }
            return weights > 0 ? Foundation.exp(logSum / Double(weights)) : nil
        }
    }
    /// The leader's next run alone, in round durations, if the next round confirms it.
    private var exploitRounds: Double

    /// Starts with a round; `initialLeader` leads until then and keeps the lead on a tie.
    public init(settings: Settings = Settings(), initialLeader: Arm = .on) {
        precondition(settings.blockSteps > settings.warmupSteps && settings.warmupSteps >= 0 && settings.pairsPerRound >= 1
                     && settings.maxBlockSteps >= settings.blockSteps && settings.minBlockSeconds >= 0 && settings.warmupSeconds >= 0
                     && settings.firstExploitRounds >= 0 && settings.maxExploitRounds >= settings.firstExploitRounds
                     && settings.margin >= 0 && settings.batchSizes >= 1)
        self.settings = settings
        leader = initialLeader
        current = ByBatchSize(sizes: settings.batchSizes)
        firstOfPair = ByBatchSize(sizes: settings.batchSizes)
        pairRatios = Array(repeating: nil, count: settings.pairsPerRound)
        exploitRounds = settings.firstExploitRounds
    }

    /// Whether a round is under way.
    public var exploring: Bool { if case .exploring = phase { return true } else { return false } }

    /// The arm the next decode step runs.
    public var arm: Arm {
        switch phase {
        case .exploiting: return leader
        case let .exploring(block, _, _): return Self.arm(ofBlock: block, leader: leader)
        }
    }

    /// Block b of a round: pair b / 2, the leader first in even pairs and second in odd ones (ABBA).
    static func arm(ofBlock block: Int, leader: Arm) -> Arm {
        let other: Arm = leader == .on ? .off : .on
        let firstInPair = (block / 2) % 2 == 0 ? leader : other
        return block % 2 == 0 ? firstInPair : (firstInPair == .on ? .off : .on)
    }

    /// A decode step of `tokens` tokens (its sequences) ran with `arm` in `seconds`.
    public mutating func record(seconds: Double, tokens: Int) {
        let ran = arm
        if ran == .on { stepsOn += 1 } else { stepsOff += 1 }
        switch phase {
        case let .exploiting(remaining):
            phase = remaining > seconds ? .exploiting(remaining: remaining - seconds) : .exploring(block: 0, step: 0, elapsed: 0)
        case let .exploring(block, step, elapsed):
            roundSeconds += seconds
            let warmingUp = step < settings.warmupSteps || (elapsed < settings.warmupSeconds && step < settings.maxBlockSteps / 2)
            if !warmingUp, tokens > 0 {
                current.add(seconds: seconds, tokens: tokens)
                blockSteps += 1
            }
            let done = blockSteps > 0 && ((step + 1 >= settings.blockSteps && elapsed + seconds >= settings.minBlockSeconds)
                                          || step + 1 >= settings.maxBlockSteps)
            guard done else {
                phase = .exploring(block: block, step: step + 1, elapsed: elapsed + seconds)
                return
            }
            if block % 2 == 0 {
                swap(&firstOfPair, &current)
            } else {
                pairRatios[block / 2] = ran == .off ? firstOfPair.ratio(to: current) : current.ratio(to: firstOfPair)
            }
            current.reset()
            blockSteps = 0
            if block + 1 < 2 * settings.pairsPerRound {
                phase = .exploring(block: block + 1, step: 0, elapsed: 0)
            } else {
                finishRound()
            }
        }
    }

    private mutating func finishRound() {
        let ratios = pairRatios.compactMap { $0 }
        for pair in pairRatios.indices { pairRatios[pair] = nil }
        let previous = leader
        var median = 1.0
        if !ratios.isEmpty {
            let sorted = ratios.sorted()
            median = sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
            // The challenger takes the lead when the median pair and most pairs favour it past
            // the margin: on a throttled disk one sequence's pairs spread widely (runs of one
            // setting 53-78 tok/s), and a median of four alone flipped the lead and back.
            let onLeads = leader == .on, margin = settings.margin
            func challengerFaster(_ ratio: Double) -> Bool { onLeads ? ratio > 1 + margin : ratio < 1 - margin }
            if challengerFaster(median), 2 * ratios.filter(challengerFaster).count > ratios.count {
                leader = leader == .on ? .off : .on
            }
        }
        rounds += 1
        lastRound = Round(pairRatios: ratios, medianRatio: median, leader: leader)
        // The first round, or a changed lead, starts the leader's run alone short; each
        // confirmation doubles it.
        if rounds == 1 || leader != previous {
            exploitRounds = settings.firstExploitRounds
        } else {
            exploitRounds = min(2 * exploitRounds, settings.maxExploitRounds)
        }
        let alone = exploitRounds * roundSeconds
        roundSeconds = 0
        phase = alone > 0 ? .exploiting(remaining: alone) : .exploring(block: 0, step: 0, elapsed: 0)
    }
}
