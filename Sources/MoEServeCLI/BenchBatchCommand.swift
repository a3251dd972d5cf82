import ArgumentParser
import Foundation
import InferenceEngine
import MoEModels

/// `moe-serve bench batch`: aggregate decode throughput and expert bytes read per generated
/// token at several concurrencies, through the real engine (continuous batching, expert-grouped
/// execution) and the expert cache under the memory budget. Each concurrency starts from a cold
/// cache in a fresh model, so the rows are comparable.
struct BenchBatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "batch", abstract: "Decode throughput at several concurrencies (JSON on stdout, table on stderr).")

    @OptionGroup var model: ModelOption
    @Option(help: "Concurrencies to measure, e.g. 1,2,4,8.") var sequences = "1,2,4,8"
    @Option(name: .customLong("gen-tokens"), help: "Tokens generated per sequence.") var genTokens = 32
    @Option(name: .customLong("prompt-tokens"), help: "Prompt length per sequence.") var promptTokens = 16
    @OptionGroup var runtimeOptions: RuntimeOptions

    struct Row: Encodable {
        var sequences: Int
        var generatedTokens: Int
        var seconds: Double
        var decodeTokensPerSecond: Double
        var expertBytesReadPerToken: Double
        var hitRate: Double
        enum CodingKeys: String, CodingKey {
            case sequences, generatedTokens = "generated_tokens", seconds
            case decodeTokensPerSecond = "decode_tokens_per_second", expertBytesReadPerToken = "expert_bytes_read_per_token"
            case hitRate = "hit_rate"
        }
    }

    func run() throws {
        try reportingErrors {
            let counts = try parseTokenList(sequences, option: "--sequences")
            guard counts.allSatisfy({ $0 >= 1 }) else { throw CommandError("--sequences: every count must be at least 1") }
            var rows: [Row] = []
            for count in counts {
                let runtime = try runtimeOptions.open(at: try model.resolvedURL(), maxSequences: count,
                                                      contextTokens: promptTokens + genTokens + 1)
                defer { runtime.close() }
                let transformer = runtime.model
                let kv = runtime.plan?.kvCacheBytes ?? (64 << 20)
                let engine = Engine(model: transformer,
                                    limits: Engine.defaultLimits(for: transformer, kvCacheBudgetBytes: kv, maxRunningSequences: count),
                                    decode: { _ in "" })
                engine.start()
                defer { engine.shutdown(grace: 0) }
                let group = DispatchGroup()
                let failure = FailureBox()
                let start = DispatchTime.now().uptimeNanoseconds
                for sequence in 0..<count {
                    // Distinct prompts so sequences route differently, as separate users would.
                    let prompt = (0..<promptTokens).map { (sequence * 7919 + $0 * 104_729) % transformer.config.vocabSize }
                    var sampling = SamplingParameters()
                    sampling.temperature = 0
                    group.enter()
                    _ = try engine.submit(GenerationRequest(prompt: prompt, maxTokens: genTokens, sampling: sampling)) { event in
                        switch event {
                        case .token: break
                        case .finished: group.leave()
                        case .failed(let message): failure.set(message); group.leave()
                        }
                    }
                }
                group.wait()
                if let message = failure.message { throw CommandError("a sequence failed: \(message)") }
                let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                let generated = count * genTokens
                let cache = runtime.cache?.statistics()
                let bytesRead = Double((cache?.total.demandBytes ?? 0) + (cache?.total.prefetchBytes ?? 0))
                rows.append(Row(sequences: count, generatedTokens: generated, seconds: seconds,
                                decodeTokensPerSecond: Double(generated) / seconds,
                                expertBytesReadPerToken: bytesRead / Double(generated), hitRate: cache?.total.hitRate ?? 1))
            }
            var table = "| sequences | tokens/s (aggregate) | × one sequence | expert MB read / token | hit rate |\n|---|---|---|---|---|\n"
            for row in rows {
                table += String(format: "| %d | %.1f | %.2f | %.3f | %.3f |\n", row.sequences, row.decodeTokensPerSecond,
                                row.decodeTokensPerSecond / rows[0].decodeTokensPerSecond, row.expertBytesReadPerToken / 1e6, row.hitRate)
            }
            FileHandle.standardError.write(Data(table.utf8))
            try printJSON(["results": rows])
        }
    }
}

/// The first failure message of a concurrent run.
final class FailureBox: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var message: String?
    func set(_ text: String) { lock.lock(); if message == nil { message = text }; lock.unlock() }
}
