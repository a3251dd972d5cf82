import ArgumentParser
import Foundation
import ExpertCache
import MoEModels

/// `moe-serve generate`: a completion for one prompt, as JSON with timing statistics.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "generate", abstract: "Generate a continuation and print it as JSON.")

    @OptionGroup var model: ModelOption
    @Option(help: "Comma-separated prompt token ids.") var tokens: String?
    @Option(name: .customLong("max-tokens"), help: "Tokens to generate.") var maxTokens: Int = 32
    @Option(help: "Sampling temperature; 0 is greedy.") var temperature: Double = 0
    @Option(help: "Random seed for sampling.") var seed: UInt64 = 0
    @Flag(name: .customLong("ignore-eos"), help: "Keep generating past end-of-sequence tokens.") var ignoreEOS = false
    @Option(name: .customLong("record-trace"), help: "Write every token's routing to this file (JSON lines, the `bench trace` format).") var recordTrace: String?
    @OptionGroup var cacheOptions: ExpertCacheOptions

    struct Output: Encodable {
        var tokens: [Int]
        var stats: GenerateStatistics
    }

    func validate() throws {
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be ≥ 0") }
        guard temperature >= 0 else { throw ValidationError("--temperature must be ≥ 0") }
    }

    func run() throws {
        try reportingErrors {
            guard let tokens else { throw CommandError("give the prompt with --tokens 1,2,3") }
            let prompt = try parseTokenList(tokens, option: "--tokens")
            let (transformer, cache) = try cacheOptions.openModel(at: try model.resolvedURL())
            defer { cache?.close() }
            let recorder = try recordTrace.map { try TraceRecorder(url: URL(fileURLWithPath: $0), layerCount: transformer.config.layerCount) }
            transformer.routingObserver = recorder
            var generator = Generator(model: transformer, sampler: Sampler(temperature: Float(temperature), seed: seed))
            let result = try generator.generate(prompt: prompt, maxTokens: maxTokens,
                                                stopTokens: ignoreEOS ? [] : Set(transformer.config.eosTokenIds))
            try recorder?.finish()
            try printJSON(Output(tokens: result.tokens, stats: GenerateStatistics(generation: result.stats, expertCache: cache?.statistics())))
        }
    }
}
