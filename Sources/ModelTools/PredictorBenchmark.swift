import ExpertPrediction
import Foundation
import InferenceEngine
import MoEModels
import Runtime

/// How well each predictor configuration guesses the experts a layer will use, on real prompts
/// (`moe-serve bench predictor`). All configurations watch the same greedy generations (a
/// prediction never changes the output), so their figures are side by side from one run.
public struct PredictorBenchmark: Sendable {
    /// How the model runs (model directory, memory budget, cache policy, prefetch, predictor).
    public var specification: RuntimeSpecification
    /// The prompts, as text.
    public var prompts: [String]
    /// Tokens generated per prompt.
    public var maxTokens = 64

    /// A benchmark of the model `specification` describes on `prompts`.
    public init(specification: RuntimeSpecification, prompts: [String], maxTokens: Int = 64) {
        self.specification = specification
        self.prompts = prompts
        self.maxTokens = maxTokens
    }

    /// One predictor configuration's figures.
    public struct ConfigResult: Encodable, Sendable {
        public var recall: Double
        public var precision: Double
        public var wastedBytesPerToken: Double
        public var perLayer: [[String: Double]]
        enum CodingKeys: String, CodingKey {
            case recall, precision, wastedBytesPerToken = "wasted_bytes_per_token", perLayer = "per_layer"
        }
    }

    /// The JSON `bench predictor` prints.
    public struct Output: Encodable, Sendable {
        public var tokens: Int
        public var prompts: Int
        public var configs: [String: ConfigResult]
    }

    /// Runs the prompts with every predictor watching; returns the JSON output and a table for people.
    public func run() throws -> (output: Output, table: String) {
            let texts = prompts
            let runtime = try ModelRuntime.open(specification)
            defer { runtime.close() }
            guard let tokenizer = runtime.tokenizer else { throw ToolError("the model has no tokenizer.json; bench predictor reads text prompts") }
            let transformer = runtime.model
            // With fitted probes (the model's own, or --predictor-probes), the cross-layer gates
            // also run with them; selection probes apply their probability floor at decode steps.
            var named = PredictorConfiguration.named.map { ($0.0, $0.1, nil as CrossLayerProbes?) }
            if let probes = runtime.probes {
                named += PredictorConfiguration.named.filter { $0.1.crossLayer && $0.1.extraWidth == 0 }.map { ($0.0 + "+probes", $0.1, probes) }
            }
            let predictors = named.map { name, configuration, probes in
                (name, ExpertPredictor(model: transformer, configuration: configuration, provider: nil, probes: probes))
            }
            for (earlier, later) in zip(predictors, predictors.dropFirst()) { earlier.1.next = later.1 }
            runtime.chain(predictors.first?.1)

            var tokens = 0
            for text in texts {
                let generator = Generator(model: transformer)
                let result = try generator.generate(prompt: tokenizer.encode(text), maxTokens: maxTokens, stopTokens: [])
                tokens += result.tokens.count + tokenizer.encode(text).count
            }
            let bytesPerExpert = Double(Self.expertBytes(transformer))
            var configs: [String: ConfigResult] = [:]
            var table = "| predictor | recall | precision | wasted MB/token |\n|---|---|---|---|\n"
            for (name, predictor) in predictors {
                let total = predictor.statistics.total
                let wasted = Double(total.wasted) * bytesPerExpert / Double(max(tokens, 1))
                configs[name] = ConfigResult(recall: total.recall, precision: total.precision, wastedBytesPerToken: wasted,
                                             perLayer: predictor.statistics.perLayer.map { ["recall": $0.recall, "precision": $0.precision] })
                table += String(format: "| %@ | %.3f | %.3f | %.2f |\n", name, total.recall, total.precision, wasted / 1e6)
            }
            return (Output(tokens: tokens, prompts: texts.count, configs: configs), table)
    }

    /// Bytes of one routed expert as the model computes with it.
    static func expertBytes(_ model: TransformerModel) -> Int {
        guard let layer = model.config.moeLayers.first else { return 0 }
        var bytes = 0
        try? model.experts.withExperts(layer: layer, experts: [0]) { _, weights in bytes = weights.byteCount }
        return bytes
    }
}
