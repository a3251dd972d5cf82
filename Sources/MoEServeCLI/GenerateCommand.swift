import ArgumentParser
import Foundation
import ExpertCache
import InferenceEngine
import MoEModels
import Runtime
import ExpertPrediction
import Tokenization

/// `moe-serve generate`: a completion for one prompt, as JSON with timing statistics.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "generate", abstract: "Generate a continuation and print it as JSON.")

    @OptionGroup var model: ModelOption
    @Option(help: "Comma-separated prompt token ids.") var tokens: String?
    @Option(help: "Prompt text, encoded with the model's tokenizer.") var prompt: String?
    @Option(name: .customLong("max-tokens"), help: "Tokens to generate.") var maxTokens: Int = 32
    @Option(help: "Sampling temperature; 0 is greedy.") var temperature: Double = 0
    @Option(help: "Random seed for sampling.") var seed: UInt64 = 0
    @Flag(name: .customLong("ignore-eos"), help: "Keep generating past end-of-sequence tokens.") var ignoreEOS = false
    @Option(name: .customLong("record-trace"), help: "Write every token's routing to this file (JSON lines, the `bench trace` format).") var recordTrace: String?
    @Option(name: .customLong("oracle-trace"), help: "Benchmark: prefetch what this trace of the same greedy generation (recorded with --record-trace) really used, a perfect predictor; needs --prefetch off.") var oracleTrace: String?
    @Option(name: .customLong("oracle-depth"), help: "How many MoE layers ahead the --oracle-trace prefetcher reads.") var oracleDepth: Int = 1
    @OptionGroup var runtimeOptions: RuntimeOptions
    @OptionGroup var lossy: LossyOptions

    struct Output: Encodable {
        var tokens: [Int]
        var text: String?
        var stats: GenerateStatistics
    }

    func validate() throws {
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be ≥ 0") }
        guard temperature >= 0 else { throw ValidationError("--temperature must be ≥ 0") }
        if oracleTrace != nil {
            guard oracleDepth >= 1 else { throw ValidationError("--oracle-depth must be ≥ 1") }
            guard temperature == 0 else { throw ValidationError("--oracle-trace replays a greedy generation: use --temperature 0") }
            guard runtimeOptions.prefetch == "off" else { throw ValidationError("--oracle-trace replaces the predictor: add --prefetch off") }
        }
    }

    func run() throws {
        try reportingErrors {
            let modelURL = try model.resolvedURL()
            let runtime = try runtimeOptions.open(at: modelURL)
            defer { runtime.close() }
            try lossy.apply(to: runtime)
            let tokenizer = runtime.tokenizer
            let promptIds: [Int]
            switch (tokens, prompt) {
            case (let tokens?, nil): promptIds = try parseTokenList(tokens, option: "--tokens")
            case (nil, let text?):
                guard let tokenizer else { throw CommandError("\(modelURL.path): --prompt needs a tokenizer.json beside the model") }
                promptIds = tokenizer.encode(text)
            default: throw CommandError("give the prompt with either --tokens 1,2,3 or --prompt TEXT")
            }
            let transformer = runtime.model
            let recorder = try recordTrace.map { try TraceRecorder(url: URL(fileURLWithPath: $0), layerCount: transformer.config.layerCount) }
            if let oracleTrace {
                guard let cache = runtime.cache else { throw CommandError("--oracle-trace: every expert is resident, there is nothing to prefetch") }
                let trace = try RoutingTrace(jsonLines: Data(contentsOf: URL(fileURLWithPath: oracleTrace)), source: oracleTrace)
                let oracle = OraclePrefetcher(decodeRouting: trace.tokens.filter { $0.phase == "decode" }.map(\.layers),
                                              moeLayers: transformer.config.moeLayers, depth: oracleDepth, provider: cache)
                oracle.next = recorder
                runtime.chain(oracle)
            } else {
                runtime.chain(recorder)
            }
            var stopTokens = Set(transformer.config.eosTokenIds)
            stopTokens.formUnion(tokenizer?.eosTokenIds ?? [])
            var sampling = SamplingParameters()
            sampling.temperature = Float(temperature)
            sampling.seed = seed
            let generator = Generator(model: transformer, sampling: sampling)
            let result = try generator.generate(prompt: promptIds, maxTokens: maxTokens, stopTokens: ignoreEOS ? [] : stopTokens)
            try recorder?.finish()
            // The text leaves out the end-of-sequence token that stopped generation.
            let visible = result.stats.finishReason == "stop" ? Array(result.tokens.dropLast()) : result.tokens
            let stats = GenerateStatistics(generation: result.stats, memory: runtime.plan, expertCache: runtime.cache?.statistics(),
                                           prediction: runtime.predictor.map { PredictionSummary($0.statistics, predictor: runtime.predictorName) },
                                           prefetchAuto: runtime.prefetchSwitch?.summary)
            try printJSON(Output(tokens: result.tokens, text: tokenizer?.decode(visible, skipSpecialTokens: true), stats: stats))
        }
    }
}
