/// How the first MoE layer, which has no earlier layer for the cross-layer gate, is predicted.
public enum FirstLayerPrediction: String, Sendable, Codable, Equatable {
    /// Not predicted.
    case none
    /// Router 0 on the layer's attention input (the normalised embedding): measured on the demo
    /// model at 32.8% recall / 32.6% precision for layer 0 (`bench predictor`, per_layer[0] of
    /// `pre_attention`).
    case embedding
    /// The experts the same sequence's previous token used at that layer: 30.5% / 30.5%.
    case history
}

/// Which predictors guess a layer's experts ahead of time, and how widely.
public struct PredictorConfiguration: Sendable, Codable, Equatable {
    /// Apply the routers of layers l+1 … l+depth to layer l's gate input (cross-layer gate).
    public var crossLayer: Bool
    /// How many layers ahead the cross-layer gate looks.
    public var depth: Int
    /// Decode steps of more rows than this look one layer ahead whatever `depth` says (prefill
    /// chunks keep `depth`). Measured on the widened demo at 96 MiB with probes (session 6):
    /// two layers ahead one sequence decodes ~1.13x faster than without prefetch but eight
    /// sequences 0.89x; one layer ahead eight gain 1.05-1.09x: a batch's union of far guesses
    /// is large and less precise, and its disk is already busy.
    public var deepRowLimit: Int
    /// Extra experts per token beyond top-k (`m`): the gate takes the top (k + m).
    public var extraWidth: Int
    /// Stop adding a token's candidates once their probabilities sum past this; 1 disables.
    public var cumulativeThreshold: Float
    /// Skip candidates whose router probability is below this (0 disables): a confident guess.
    public var minProbability: Float
    /// With selection probes (`CrossLayerProbes.Output.selection`), skip candidates less likely
    /// than this to be among the layer's top-k (0 disables). Used in place of `minProbability`,
    /// whose router probabilities are not calibrated for it. 0.9 since session 26: on disks of
    /// one rate (throttled, or emulated at 600-3000 MB/s) it decoded 1.02-1.12x faster than
    /// 0.7 and read 2-8% fewer bytes per token, also on the cloud disk (10 of 10 pairs), because
    /// a wrong guess costs a whole read while a right one saves only the part of a read that
    /// compute could not hide (docs/PREDICTOR.md, "Session 26"). 0.7 was chosen in session 6 on
    /// that cloud disk, whose rate swings too much to tell the two apart.
    public var minSelectionProbability: Float
    /// Apply router l to layer l's attention input, so loads start during attention.
    public var preAttention: Bool
    /// Also predict the experts the previous `historyTokens` steps used at the layer.
    public var historyTokens: Int
    /// At most this many guesses per layer and step (a cap on the predictor's output). The
    /// cache separately bounds the unused prefetches a layer holds across steps
    /// (`CacheBookkeeping.speculativeLayerBytes`, `--prefetch-budget`), which is what stops a
    /// batch's guesses from churning a tight cache.
    public var maxPredictedPerLayer: Int
    /// How the first MoE layer is predicted when neither `preAttention` nor `historyTokens`
    /// already covers it.
    public var firstLayer: FirstLayerPrediction

    public init(crossLayer: Bool = true, depth: Int = 1, deepRowLimit: Int = .max, extraWidth: Int = 0, cumulativeThreshold: Float = 1,
                minProbability: Float = 0, minSelectionProbability: Float = 0.9, preAttention: Bool = false, historyTokens: Int = 0,
                maxPredictedPerLayer: Int = .max, firstLayer: FirstLayerPrediction = .none) {
        self.crossLayer = crossLayer
        self.depth = depth
        self.deepRowLimit = deepRowLimit
        self.extraWidth = extraWidth
        self.cumulativeThreshold = cumulativeThreshold
        self.minProbability = minProbability
        self.minSelectionProbability = minSelectionProbability
        self.preAttention = preAttention
        self.historyTokens = historyTokens
        self.maxPredictedPerLayer = maxPredictedPerLayer
        self.firstLayer = firstLayer
    }

    /// The named configurations `bench predictor` compares.
    public static let named: [(String, PredictorConfiguration)] = [
        // The cross-layer gates cover layer 0 with router 0 on the embedding, which measured
        // better than the previous token's layer-0 experts (see `FirstLayerPrediction`).
        ("cross_layer", PredictorConfiguration(crossLayer: true, depth: 1, extraWidth: 0, firstLayer: .embedding)),
        ("cross_layer_wide", PredictorConfiguration(crossLayer: true, depth: 1, extraWidth: 2, firstLayer: .embedding)),
        ("cross_layer_deep", PredictorConfiguration(crossLayer: true, depth: 2, deepRowLimit: 1, extraWidth: 0, firstLayer: .embedding)),
        // Three layers ahead, for when one read outlasts two layers' compute; needs probes fitted
        // three layers ahead (`train_predictor_probes.py --depths 1,2,3`), else the third guess is
        // the plain router gate. Measured no better than two ahead on the widened demo (1.05x
        // against 1.01x in one run, 0.93x against 1.11x before guesses held resident experts;
        // docs/PREDICTOR.md "Session 17"), so not a default.
        ("cross_layer_deep3", PredictorConfiguration(crossLayer: true, depth: 3, deepRowLimit: 1, extraWidth: 0, firstLayer: .embedding)),
        ("pre_attention", PredictorConfiguration(crossLayer: false, preAttention: true)),
        ("history", PredictorConfiguration(crossLayer: false, historyTokens: 1)),
        ("combined", PredictorConfiguration.default),
    ]

    /// The default: cross-layer gate one layer ahead with one extra candidate per token, plus
    /// the pre-attention gate (which alone covers layer 0).
    public static let `default` = PredictorConfiguration(crossLayer: true, depth: 1, extraWidth: 1, preAttention: true)
}
