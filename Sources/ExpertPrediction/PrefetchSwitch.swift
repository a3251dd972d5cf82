import Foundation
import ModelFormats

/// `--prefetch auto`: the model's routing observer in front of the predictor, turning
/// prefetching on and off step by step as a `PrefetchDuel` decides, and timing the decode steps
/// the duel needs.
///
/// With prefetching on, every event goes to the predictor (which passes it down its chain) and
/// the model runs its shadow routing if asked to; off, events skip the predictor and go
/// straight to what it chains to, and no shadow runs: the step costs what `--prefetch off`
/// costs. When prefetching pauses, the predictor's outstanding guesses are withdrawn and their
/// reads cancelled, so that the first step without prefetch does not read them.
///
/// Called on the engine thread; `summary` may be read from any thread.
public final class PrefetchSwitch: RoutingObserver, @unchecked Sendable {
    public let predictor: ExpertPredictor
    /// Turns the model's shadow routing on or off (the switch does not hold the model, which
    /// holds the switch).
    private let setShadowRouting: (Bool) -> Void
    /// Whether shadow routing runs while prefetching is on (`--shadow-routing`).
    private let shadowRouting: Bool
    /// Monotonic nanoseconds.
    private let clock: () -> UInt64

    private let lock = NSLock()
    private var duel: PrefetchDuel
    /// The arm the current step runs, and when the step started; `stepTokens` is nil when it
    /// is not a decode step (the duel does not count it).
    private var running: PrefetchDuel.Arm
    private var stepStart: UInt64 = 0
    private var stepTokens: Int?

    public init(predictor: ExpertPredictor, duel: PrefetchDuel = PrefetchDuel(), shadowRouting: Bool,
                setShadowRouting: @escaping (Bool) -> Void,
                clock: @escaping () -> UInt64 = { DispatchTime.now().uptimeNanoseconds }) {
        self.predictor = predictor
        self.duel = duel
        self.shadowRouting = shadowRouting
        self.setShadowRouting = setShadowRouting
        self.clock = clock
        running = duel.arm
        setShadowRouting(running == .on && shadowRouting)
    }

    /// What the duel has decided so far.
    public struct Summary: Sendable, Equatable, Encodable {
        /// The arm that runs outside rounds.
        public var leader: PrefetchDuel.Arm
        /// The arm the current (or next) step runs.
        public var running: PrefetchDuel.Arm
        public var rounds: Int
        /// The last round's median on ÷ off ratio, seconds per step of one batch size (below 1:
        /// prefetching was faster).
        public var lastMedianRatio: Double?
        public var lastPairRatios: [Double]?
        /// Decode steps run with and without prefetching.
        public var stepsOn: Int
        public var stepsOff: Int
        enum CodingKeys: String, CodingKey {
            case leader, running, rounds, lastMedianRatio = "last_median_ratio", lastPairRatios = "last_pair_ratios"
            case stepsOn = "steps_on", stepsOff = "steps_off"
        }
    }

    public var summary: Summary {
        lock.withLock {
            Summary(leader: duel.leader, running: running, rounds: duel.rounds, lastMedianRatio: duel.lastRound?.medianRatio,
                    lastPairRatios: duel.lastRound?.pairRatios, stepsOn: duel.stepsOn, stepsOff: duel.stepsOff)
        }
    }

    /// Where events go this step: the predictor, or past it.
    private var target: RoutingObserver? { running == .on ? predictor : predictor.next }

    public func willRunStep(lastRows: [Int]) {
        // One lock a step: `running` is written only here, on the engine thread, and read
        // without the lock only on it (`target`).
        let (arm, previous) = lock.withLock { () -> (PrefetchDuel.Arm, PrefetchDuel.Arm) in
            defer { running = duel.arm }
            return (duel.arm, running)
        }
        if arm != previous {
            if arm == .off { predictor.withdrawGuesses() }
            setShadowRouting(arm == .on && shadowRouting)
        }
        // A decode step has one row per sequence: its last rows are 0, 1, …, n - 1.
        let decode = !lastRows.isEmpty && lastRows.last! == lastRows.count - 1
        stepTokens = decode ? lastRows.count : nil
        stepStart = clock()
        target?.willRunStep(lastRows: lastRows)
    }

    public func didRunStep() {
        target?.didRunStep()
        guard let tokens = stepTokens else { return }
        stepTokens = nil
        let seconds = Double(clock() &- stepStart) / 1e9
        lock.withLock { duel.record(seconds: seconds, tokens: tokens) }
    }

    public func willRunSequences(_ sequences: [SequenceRows]) { target?.willRunSequences(sequences) }

    public func sequenceEnded(_ id: Int) { target?.sequenceEnded(id) }

    public func willRunAttention(layer: Int, input: UnsafePointer<Float>, rowCount: Int) {
        target?.willRunAttention(layer: layer, input: input, rowCount: rowCount)
    }

    public func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) {
        target?.didRoute(layer: layer, routes: routes, gateInput: gateInput, rowCount: rowCount)
    }

    public func didShadowRoute(layer: Int, routes: [TokenRouting]) { target?.didShadowRoute(layer: layer, routes: routes) }
    public func didShadowGuess(layer: Int, experts: [Int]) { target?.didShadowGuess(layer: layer, experts: experts) }
}
