/// Belady's optimal policy (MIN) for offline replay: evicts the expert whose next use is
/// farthest in the future (never used again counts as infinitely far). It needs the future,
/// so the replay tells it each expert's next use (`observeNextUse`) before using it. Ties go
/// to the lower (layer, expert), matching `scripts/replay_trace.py`.
public struct BeladyPolicy: CachePolicy {
    public let name: String
    private var nextUse: [ExpertKey: Int] = [:]

    /// An empty policy; `name` labels it in reports.
    public init(name: String = "belady") { self.name = name }

    /// `key` will next be used at time `time` (`Int.max`: never).
    public mutating func observeNextUse(_ key: ExpertKey, at time: Int) { nextUse[key] = time }

    public mutating func didInsert(_ key: ExpertKey) {}
    public mutating func didAccess(_ key: ExpertKey) {}
    public mutating func didEvict(_ key: ExpertKey) { nextUse[key] = nil }

    public func victim(among candidates: [ExpertKey]) -> ExpertKey {
        // Farthest next use first; among equals, the lowest key.
        candidates.min { (-(nextUse[$0] ?? Int.max), $0) < (-(nextUse[$1] ?? Int.max), $1) }!
    }
}
