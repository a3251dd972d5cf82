/// Opt-in lossy routing (`--skip-missing-below W`): a routed expert that is not resident when
/// its layer runs and whose mixing weight is below `W` is left out, and the row's remaining
/// weights are rescaled to the total they had, instead of waiting for its read. The idea of
/// MoDES and AdapMoE (skip experts whose router weight is small), restricted to experts that
/// would cost a read: a resident expert is always used. The cost in quality is measured with
/// `moe-serve perplexity --kl-base` (docs/LOSSY.md).
public enum WeakExpertSkipping {
    /// What `apply` left out.
    public struct Skipped: Sendable, Equatable {
        /// Rows (tokens) that left out at least one expert.
        public var tokens = 0
        /// (row, expert) pairs left out.
        public var experts = 0

        /// Nothing skipped.
        public init(tokens: Int = 0, experts: Int = 0) {
            self.tokens = tokens
            self.experts = experts
        }
    }

    /// Removes from each row of `routes` the experts below `threshold` for which `isResident`
    /// is false (asked at most once per expert), rescaling the row's remaining weights to its
    /// original total. A row's first (highest-weighted) expert is never removed, so every
    /// token keeps at least one expert.
    public static func apply(_ routes: inout [TokenRouting], threshold: Float, isResident: (Int) -> Bool) -> Skipped {
        var skipped = Skipped()
        var residency: [Int: Bool] = [:]
        for row in routes.indices {
            let routing = routes[row]
            var kept = TokenRouting(experts: [], weights: [])
            for (rank, (expert, weight)) in zip(routing.experts, routing.weights).enumerated() {
                if rank > 0 && weight < threshold {
                    let resident = residency[expert] ?? isResident(expert)
                    residency[expert] = resident
                    if !resident { continue }
                }
                kept.experts.append(expert)
                kept.weights.append(weight)
            }
            let removed = routing.experts.count - kept.experts.count
            guard removed > 0 else { continue }
            // The row's mixture keeps its scale: renormalised top-k rows still sum to 1.
            let scale = routing.weights.reduce(0, +) / kept.weights.reduce(0, +)
            kept.weights = kept.weights.map { $0 * scale }
            routes[row] = kept
            skipped.tokens += 1
            skipped.experts += removed
        }
        return skipped
    }
}
