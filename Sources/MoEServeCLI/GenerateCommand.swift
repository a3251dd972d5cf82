import ArgumentParser
import Foundation
import MoEModels
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

    struct Output: Encodable {
        var tokens: [Int]
        var text: String?
        var stats: GenerationStats
    }

    func validate() throws {
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be ≥ 0") }
        guard temperature >= 0 else { throw ValidationError("--temperature must be ≥ 0") }
    }

    func run() throws {
        try reportingErrors {
            let modelURL = try model.resolvedURL()
            let tokenizer = try? Tokenizer.load(directory: modelURL)
            let promptIds: [Int]
            switch (tokens, prompt) {
            case (let tokens?, nil): promptIds = try parseTokenList(tokens, option: "--tokens")
            case (nil, let text?):
                guard let tokenizer else { throw CommandError("\(modelURL.path): --prompt needs a tokenizer.json beside the model") }
                promptIds = tokenizer.encode(text)
            default: throw CommandError("give the prompt with either --tokens 1,2,3 or --prompt TEXT")
            }
            let transformer = try openModel(at: modelURL)
            var stopTokens = Set(transformer.config.eosTokenIds)
            stopTokens.formUnion(tokenizer?.eosTokenIds ?? [])
            var generator = Generator(model: transformer, sampler: Sampler(temperature: Float(temperature), seed: seed))
            let result = try generator.generate(prompt: promptIds, maxTokens: maxTokens, stopTokens: ignoreEOS ? [] : stopTokens)
            // The text leaves out the end-of-sequence token that stopped generation.
            let visible = result.stats.finishReason == "stop" ? Array(result.tokens.dropLast()) : result.tokens
            try printJSON(Output(tokens: result.tokens, text: tokenizer?.decode(visible, skipSpecialTokens: true), stats: result.stats))
        }
    }
}
