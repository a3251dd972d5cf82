import ArgumentParser
import ExpertPrediction
import Foundation
import InferenceEngine
import MoEModels
import Runtime

/// `moe-serve bench predictor`: how well each predictor configuration guesses the experts a
/// layer will use, on real prompts. All configurations watch the same greedy generations (a
/// prediction never changes the output), so their figures are side by side from one run.
struct BenchPredictorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predictor", abstract: "Recall and precision of the expert predictors (JSON on stdout, table on stderr).")

    @OptionGroup var model: ModelOption
    @Option(help: "File with one JSON string per line, each a prompt.") var prompts: String
    @Option(name: .customLong("max-tokens"), help: "Tokens generated per prompt.") var maxTokens = 64
    @OptionGroup var runtimeOptions: RuntimeOptions

    struct ConfigResult: Encodable {
        var recall: Double
        var precision: Double
        var wastedBytesPerToken: Double
        var perLayer: [[String: Double]]
        enum CodingKeys: String, CodingKey {
            case recall, precision, wastedBytesPerToken = "wasted_bytes_per_token", perLayer = "per_layer"
        }
    }

    struct Output: Encodable {
        var tokens: Int
        var prompts: Int
        var configs: [String: ConfigResult]
    }

    func run() throws {
        try reportingErrors {
            let texts = try readPromptFile(prompts)
            let runtime = try runtimeOptions.open(at: try model.resolvedURL())
            defer { runtime.close() }
            guard let tokenizer = runtime.tokenizer else { throw CommandError("the model has no tokenizer.json; bench predictor reads text prompts") }
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
            FileHandle.standardError.write(Data(table.utf8))
            try printJSON(Output(tokens: tokens, prompts: texts.count, configs: configs))
        }
    }

    /// Bytes of one routed expert as the model computes with it.
    static func expertBytes(_ model: TransformerModel) -> Int {
        guard let layer = model.config.moeLayers.first else { return 0 }
        var bytes = 0
        try? model.experts.withExperts(layer: layer, experts: [0]) { _, weights in bytes = weights.byteCount }
        return bytes
    }
}
