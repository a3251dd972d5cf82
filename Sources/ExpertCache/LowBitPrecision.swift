/// Which copy of an expert a layer runs when low-bit misses are on (`--low-bit-misses on`,
/// docs/LOSSY.md), as a pure state machine: no I/O, no threads, no clocks but the calls of
/// each layer. The runtime cache asks it under its lock for every expert a layer needs.
///
/// - The full copy resident: it runs (a hit, exact).
/// - The full copy being read: the low-bit copy runs if it is resident (the full one lands
///   for later steps); otherwise the step waits for the full read already under way.
/// - Neither: the low-bit copy runs now (read at demand priority if absent: a fraction of the
///   bytes), and the expert's use is recorded. An expert used again within `window` calls of
///   its layer `promoteAfter` times in a row is promoted: its full copy is read at prefetch
///   priority and replaces the low-bit one. Hot experts so end up full and cold ones stay
///   low-bit (the idea of HOBBIT's low-precision misses and of MC-MoE/EAQuant's per-expert
///   precision from observed use).
public struct LowBitPrecision: Sendable {
    /// What a layer runs for one expert.
    public enum Choice: Sendable, Equatable {
        /// The full copy (resident, or its read is awaited).
        case full
        /// The low-bit copy; `promote`: also start reading the full copy in the background.
        case lowBit(promote: Bool)
    }

    /// Uses in a row (each within `window` calls of the previous) that promote an expert.
    public let promoteAfter: Int
    /// Calls of a layer within which a use continues a run of uses.
    public let window: Int
    private var clock: [Int: Int] = [:]
    private var history: [ExpertKey: (last: Int, uses: Int)] = [:]

    /// A state machine promoting after `promoteAfter` uses within `window` calls of a layer each.
    public init(promoteAfter: Int = 2, window: Int = 8) {
        precondition(promoteAfter >= 1 && window >= 1)
        self.promoteAfter = promoteAfter
        self.window = window
    }

    /// A layer starts a call (one step's use of its experts).
    public mutating func tick(layer: Int) { clock[layer, default: 0] += 1 }

    /// The copy `key` runs with, given where its full and low-bit copies are (nil: absent).
    public mutating func choose(_ key: ExpertKey, full: CacheBookkeeping.Residency?, lowBit: CacheBookkeeping.Residency?) -> Choice {
        switch full {
        case .resident?:
            history[key] = nil // full now: its run of low-bit uses is over
            return .full
        case .loading?:
            return lowBit == .resident ? .lowBit(promote: false) : .full
        case nil:
            let now = clock[key.layer, default: 0]
            var record = history[key] ?? (last: now, uses: 0)
            record.uses = now - record.last <= window ? record.uses + 1 : 1
            record.last = now
            history[key] = record
            return .lowBit(promote: record.uses >= promoteAfter)
        }
    }

    /// Uses in the current run of `key` (0 if none), for tests and diagnostics.
    public func uses(_ key: ExpertKey) -> Int { history[key]?.uses ?? 0 }
}
