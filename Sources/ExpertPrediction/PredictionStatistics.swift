/// How well predictions matched the experts the router then chose, per layer.
public struct LayerPredictionStatistics: Sendable, Codable, Equatable {
    /// Experts the router chose (distinct per step).
    public var used = 0
    /// Of those, how many had been predicted.
    public var predictedAndUsed = 0
    /// Experts predicted (as the layer routed: after withdrawals).
    public var predicted = 0
    /// Guesses from farther back that the nearest layer's guess withdrew before the layer
    /// routed (their reads cancelled if not started; counted in neither column above).
    public var withdrawn = 0
    /// Shadow runs of this layer (`didShadowRoute`), and the guesses they added that no
    /// earlier guess had made.
    public var shadowRuns = 0
    public var shadowAdded = 0

    /// Used experts that were predicted.
    public var recall: Double { used == 0 ? 0 : Double(predictedAndUsed) / Double(used) }
    /// Predicted experts that were used.
    public var precision: Double { predicted == 0 ? 0 : Double(predictedAndUsed) / Double(predicted) }
    /// Predicted experts that were not used.
    public var wasted: Int { predicted - predictedAndUsed }

    public static func + (a: Self, b: Self) -> Self {
        Self(used: a.used + b.used, predictedAndUsed: a.predictedAndUsed + b.predictedAndUsed, predicted: a.predicted + b.predicted,
             withdrawn: a.withdrawn + b.withdrawn, shadowRuns: a.shadowRuns + b.shadowRuns, shadowAdded: a.shadowAdded + b.shadowAdded)
    }
}

/// Prediction statistics of one predictor over a run.
public struct PredictionStatistics: Sendable, Codable, Equatable {
    /// Per model layer (dense layers stay zero).
    public var perLayer: [LayerPredictionStatistics]
    /// Decode/prefill steps observed.
    public var steps = 0

    public init(layerCount: Int) { perLayer = Array(repeating: LayerPredictionStatistics(), count: layerCount) }

    /// All layers together.
    public var total: LayerPredictionStatistics { perLayer.reduce(LayerPredictionStatistics(), +) }
}
