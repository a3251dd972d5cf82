/// Which predictors guess a layer's experts ahead of time, and how widely.
public struct PredictorConfiguration: Sendable, Codable, Equatable {
    /// Apply the routers of layers l+1 … l+depth to layer l's gate input (cross-layer gate).
    public var crossLayer: Bool
    /// How many layers ahead the cross-layer gate looks.
    public var depth: Int
    /// Extra experts per token beyond top-k (`m`): the gate takes the top (k + m).
    public var extraWidth: Int
    /// Stop adding a token's candidates once their probabilities sum past this; 1 disables.
    public var cumulativeThreshold: Float
    /// Apply router l to layer l's attention input, so loads start during attention.
    public var preAttention: Bool
    /// Also predict the experts the previous `historyTokens` steps used at the layer.
    public var historyTokens: Int
    /// At most this many speculative experts per layer (the per-layer speculative budget).
    public var maxPredictedPerLayer: Int

    public init(crossLayer: Bool = true, depth: Int = 1, extraWidth: Int = 0, cumulativeThreshold: Float = 1,
                preAttention: Bool = false, historyTokens: Int = 0, maxPredictedPerLayer: Int = .max) {
        self.crossLayer = crossLayer
        self.depth = depth
        self.extraWidth = extraWidth
        self.cumulativeThreshold = cumulativeThreshold
        self.preAttention = preAttention
        self.historyTokens = historyTokens
        self.maxPredictedPerLayer = maxPredictedPerLayer
    }

    /// The named configurations `bench predictor` compares.
    public static let named: [(String, PredictorConfiguration)] = [
        ("cross_layer", PredictorConfiguration(crossLayer: true, depth: 1, extraWidth: 0)),
        ("cross_layer_wide", PredictorConfiguration(crossLayer: true, depth: 1, extraWidth: 2)),
        ("cross_layer_deep", PredictorConfiguration(crossLayer: true, depth: 2, extraWidth: 0)),
        ("pre_attention", PredictorConfiguration(crossLayer: false, preAttention: true)),
        ("history", PredictorConfiguration(crossLayer: false, historyTokens: 1)),
        ("combined", PredictorConfiguration.default),
    ]

    /// The default: cross-layer gate one layer ahead with one extra candidate per token, plus
    /// the pre-attention gate (which alone covers layer 0).
    public static let `default` = PredictorConfiguration(crossLayer: true, depth: 1, extraWidth: 1, preAttention: true)
}
