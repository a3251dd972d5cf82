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
    }

    /// Score function.
    public var scoring: Scoring
    /// Experts chosen per token.
    public var topK: Int
    /// Divide the chosen scores by their sum (`norm_topk_prob`).
    public var renormalize: Bool

    public init(scoring: Scoring, topK: Int, renormalize: Bool) {
        self.scoring = scoring
        self.topK = topK
        self.renormalize = renormalize
    }

    /// Turns `count` logits into scores in place.
    public func scores(_ logits: UnsafeMutablePointer<Float>, count: Int) {
        switch scoring {
        case .softmax: Ops.softmax(logits, count: count)
        }
    }

    /// The `k` experts this rule would choose from `scores`, best first (`k` may exceed
    /// `topK`: the predictor asks for a few more).
    public func select(_ scores: UnsafePointer<Float>, count: Int, k: Int) -> [Int] {
        Ops.topK(scores, count: count, k: k)
    }

    /// Routes one token: `logits[count]` (overwritten by the scores) → chosen experts and weights.
    public func route(_ logits: UnsafeMutablePointer<Float>, count: Int) -> TokenRouting {
        scores(logits, count: count)
        let chosen = select(logits, count: count, k: topK)
        var weights = chosen.map { logits[$0] }
        if renormalize {
            let total = weights.reduce(0, +)
            weights = weights.map { $0 / total }
        }
        return TokenRouting(experts: chosen, weights: weights)
    }
}
