import ArgumentParser
import Foundation
import MoEModels

/// `moe-serve logits --model PATH --tokens 1,2,3`: the float32 logits of the last position.
struct LogitsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logits", abstract: "Print the logits of the last position as JSON.")

    @OptionGroup var model: ModelOption
    @Option(help: "Comma-separated prompt token ids.") var tokens: String
    @Flag(help: "Print the logits of every position ([[...], ...]) instead of only the last.") var allPositions = false

    func run() throws {
        try reportingErrors {
            let ids = try parseTokenList(tokens, option: "--tokens")
            let transformer = try openModel(at: try model.resolvedURL())
            let cache = transformer.makeCache()
            let logits = try transformer.forward([SequenceInput(cache: cache, tokens: ids, allLogits: allPositions)])[0]
            if allPositions {
                let vocab = transformer.config.vocabSize
                try printJSON(["logits": stride(from: 0, to: logits.count, by: vocab).map { Array(logits[$0..<$0 + vocab]) }])
            } else {
                try printJSON(["logits": logits])
            }
        }
    }
}
