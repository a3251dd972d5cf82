import TensorMath

/// The routing decision for one token in one MoE layer.
public struct TokenRouting: Sendable, Equatable {
    /// Chosen experts, highest router score first.
    public var experts: [Int]
    /// Their mixing weights (renormalised when the architecture says so).
    public var weights: [Float]

    public init(experts: [Int], weights: [Float]) {
        self.experts = experts
        self.weights = weights
    }
}

/// An MoE router's rule as data: how logits become scores, how experts are selected from the
/// scores, and how the chosen scores become mixing weights. The MoE block routes with it and
/// the predictor guesses with the same `scores` and `select`, so a new rule (sigmoid scores,
/// a score-correction bias, grouped selection, a routed scaling factor) is one change here.
public struct RouterSpec: Sendable, Equatable {
    /// How router logits become scores.
    public enum Scoring: Sendable, Equatable {
        /// Softmax over all experts, in float32.
        case softmax
        /// An independent sigmoid per expert (DeepSeek-V3, GLM-4.5, MiniMax-M2).
        case sigmoid
    }

    /// Group-limited selection: the experts are split into `groupCount` equal groups, only the
    /// `selectedGroups` best groups stay eligible, and the top-k is taken among their experts.
    public struct GroupLimit: Sendable, Equatable, Codable {
        /// How a group is scored from its experts' (bias-corrected) scores.
        public enum GroupScore: Sendable, Equatable, Codable {
            /// Its best expert (DeepSeek-V2 `group_limited_greedy`); ineligible experts score 0.
            case max
            /// The sum of its two best experts (DeepSeek-V3, GLM-4.5); ineligible experts score -inf.
            case topTwoSum
        }
        /// `n_group`.
        public var groupCount: Int
        /// `topk_group`.
        public var selectedGroups: Int
        /// The group score.
        public var groupScore: GroupScore

        public init(groupCount: Int, selectedGroups: Int, groupScore: GroupScore) {
            self.groupCount = groupCount
            self.selectedGroups = selectedGroups
            self.groupScore = groupScore
        }
    }

    /// Score function.
    public var scoring: Scoring
    /// Experts chosen per token.
    public var topK: Int
    /// Divide the chosen scores by their sum (`norm_topk_prob`).
    public var renormalize: Bool

    /// Per-expert bias added to the scores for choosing experts only, never to the mixing
    /// weights (`e_score_correction_bias`, one per layer: the MoE block fills it in).
    public var correctionBias: [Float]?
    /// Group-limited selection, nil for a plain top-k.
    public var groups: GroupLimit?
    /// Multiplies the final mixing weights (`routed_scaling_factor`).
    public var scalingFactor: Float

    public init(scoring: Scoring, topK: Int, renormalize: Bool, correctionBias: [Float]? = nil, groups: GroupLimit? = nil,
                scalingFactor: Float = 1) {
        self.scoring = scoring
        self.topK = topK
        self.renormalize = renormalize
        self.correctionBias = correctionBias
        self.groups = groups
        self.scalingFactor = scalingFactor
    }

    /// Turns `count` logits into scores in place.
    public func scores(_ logits: UnsafeMutablePointer<Float>, count: Int) {
        switch scoring {
        case .softmax: Ops.softmax(logits, count: count)
        case .sigmoid: for i in 0..<count { logits[i] = Ops.sigmoid(logits[i]) }
        }
    }

    /// The `k` experts this rule would choose from `scores`, best first (`k` may exceed
    /// `topK`: the predictor asks for a few more; experts outside the chosen groups come last).
    public func select(_ scores: UnsafePointer<Float>, count: Int, k: Int) -> [Int] {
        var chosen: [Int] = []
        select(scores, count: count, k: k, into: &chosen)
        return chosen
    }

    /// As `select(_:count:k:)`, written into `chosen` (emptied first; no allocation when it
    /// has room for `k + 1`): the MoE block routes every token of every step through here.
    public func select(_ scores: UnsafePointer<Float>, count: Int, k: Int, into chosen: inout [Int]) {
        guard correctionBias != nil || groups != nil else { return Ops.topK(scores, count: count, k: k, into: &chosen) }
        withUnsafeTemporaryAllocation(of: Float.self, capacity: count) { buffer in
            let choice = buffer.baseAddress! // [experts]: scores + bias, then masked to the chosen groups
            for e in 0..<count { choice[e] = scores[e] + (correctionBias?[e] ?? 0) }
            if let groups, groups.groupCount > 1, count % groups.groupCount == 0 {
                // Stack memory only: this runs for every token in every MoE layer.
                let size = count / groups.groupCount
                withUnsafeTemporaryAllocation(of: Float.self, capacity: groups.groupCount) { groupBuffer in
                    let groupScores = groupBuffer.baseAddress! // [groups]
                    for g in 0..<groups.groupCount {
                        let members = choice + g * size
                        var best = -Float.infinity, second = -Float.infinity
                        for i in 0..<size {
                            let value = members[i]
                            if value > best { second = best; best = value } else if value > second { second = value }
                        }
                        switch groups.groupScore {
                        case .max: groupScores[g] = best
                        case .topTwoSum: groupScores[g] = size >= 2 ? best + second : best
                        }
                    }
                    // The `selectedGroups` best groups stay; the others are masked (ties keep the lower index, as top-k).
                    let selected = min(groups.selectedGroups, groups.groupCount)
                    let masked: Float = groups.groupScore == .max ? 0 : -.infinity
                    for g in 0..<groups.groupCount {
                        var better = 0
                        for other in 0..<groups.groupCount where other != g {
                            if groupScores[other] > groupScores[g] || (groupScores[other] == groupScores[g] && other < g) { better += 1 }
                        }
                        if better >= selected {
                            for e in (g * size)..<((g + 1) * size) { choice[e] = masked }
                        }
                    }
                }
            }
            Ops.topK(choice, count: count, k: k, into: &chosen)
        }
    }

    /// Routes one token: `logits[count]` (overwritten by the scores) → chosen experts and weights.
    public func route(_ logits: UnsafeMutablePointer<Float>, count: Int) -> TokenRouting {
        var routing = TokenRouting(experts: [], weights: [])
        route(logits, count: count, into: &routing)
        return routing
    }

    /// As `route(_:count:)`, written into `routing`: its lists are emptied and refilled, so lists
    /// with room for `topK + 1` experts and `topK` weights are reused without allocating.
    public func route(_ logits: UnsafeMutablePointer<Float>, count: Int, into routing: inout TokenRouting) {
        scores(logits, count: count)
        select(logits, count: count, k: topK, into: &routing.experts)
        // Mixing weights come from the scores themselves, never from the bias-corrected ones.
        routing.weights.removeAll(keepingCapacity: true)
        for expert in routing.experts { routing.weights.append(logits[expert]) }
        if renormalize {
            let total = routing.weights.reduce(0, +)
            for i in routing.weights.indices { routing.weights[i] /= total }
        }
        if scalingFactor != 1 { for i in routing.weights.indices { routing.weights[i] *= scalingFactor } }
    }
}
