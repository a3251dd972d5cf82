import Foundation
import MoEModels

/// Timing and counts of one generation.
public struct GenerationStats: Codable, Sendable {
    public var promptTokens: Int
    public var generatedTokens: Int
    public var prefillSeconds: Double
    public var decodeSeconds: Double
    public var prefillTokensPerSecond: Double
    public var decodeTokensPerSecond: Double
    public var finishReason: String

    enum CodingKeys: String, CodingKey {
        case promptTokens = "prompt_tokens", generatedTokens = "generated_tokens"
        case prefillSeconds = "prefill_seconds", decodeSeconds = "decode_seconds"
        case prefillTokensPerSecond = "prefill_tokens_per_second", decodeTokensPerSecond = "decode_tokens_per_second"
        case finishReason = "finish_reason"
    }
}

extension SamplingParameters {
    /// Greedy decoding (argmax), with a fixed seed so nothing random is drawn.
    public static var greedy: SamplingParameters {
        var parameters = SamplingParameters()
        parameters.temperature = 0
        parameters.seed = 0
        return parameters
    }
}

/// One sequence on its own, timed apart from the engine: prefill the prompt in one step, then
/// decode one token per step, each chosen by the engine's `TokenSampler` (the one sampler).
/// `generate`, `bench decode`, `bench predictor` and the fidelity tests use it; the engine
/// batches many sequences the same way.
public struct Generator {
    public let model: TransformerModel
    public let sampling: SamplingParameters

    /// A generator over `model` that samples with `sampling` (greedy by default).
    public init(model: TransformerModel, sampling: SamplingParameters = .greedy) {
        self.model = model
        self.sampling = sampling
    }

    /// Generates up to `maxTokens` tokens after `prompt`, stopping early at a `stopTokens` id
    /// (which is included in the output) or at the context limit. `onPrefilled` runs between
    /// the prefill and the first decode step, outside both timings (a benchmark reads its
    /// counters there).
    public func generate(prompt: [Int], maxTokens: Int, stopTokens: Set<Int>, onToken: (Int) -> Void = { _ in },
                         onPrefilled: () -> Void = {}) throws -> (tokens: [Int], stats: GenerationStats) {
        guard !prompt.isEmpty else { throw GenerationError("the prompt is empty") }
        guard prompt.count < model.config.maxPositionEmbeddings else {
            throw GenerationError("the prompt has \(prompt.count) tokens; the model's context is \(model.config.maxPositionEmbeddings)")
        }
        var sampler = TokenSampler(parameters: sampling, prompt: prompt)
        let cache = model.makeCache()
        defer { model.sequenceEnded(cache) }
        var generated: [Int] = []
        var finish = "length"
        let prefillStart = DispatchTime.now().uptimeNanoseconds
        // Each step's logits are read in place before the next step overwrites them.
        var logits = try model.forwardStep([SequenceInput(cache: cache, tokens: prompt)])
        let prefillEnd = DispatchTime.now().uptimeNanoseconds
        onPrefilled()
        let decodeStart = DispatchTime.now().uptimeNanoseconds
        while generated.count < maxTokens {
            let token = sampler.sample(logits[0], logprobs: false).token
            generated.append(token)
            onToken(token)
            if stopTokens.contains(token) { finish = "stop"; break }
            if cache.length >= model.config.maxPositionEmbeddings { finish = "context"; break }
            if generated.count == maxTokens { break }
            logits = try model.forwardStep([SequenceInput(cache: cache, tokens: [token])])
        }
        let decodeEnd = DispatchTime.now().uptimeNanoseconds
        let prefillSeconds = Double(prefillEnd - prefillStart) / 1e9
        let decodeSeconds = Double(decodeEnd - decodeStart) / 1e9
        // The first generated token comes from the prefill's logits, so decode steps = n - 1.
        let decodeSteps = max(generated.count - 1, 0)
        let stats = GenerationStats(
            promptTokens: prompt.count, generatedTokens: generated.count,
            prefillSeconds: prefillSeconds, decodeSeconds: decodeSeconds,
            prefillTokensPerSecond: Double(prompt.count) / max(prefillSeconds, 1e-9),
            decodeTokensPerSecond: decodeSteps > 0 ? Double(decodeSteps) / max(decodeSeconds, 1e-9) : 0,
            finishReason: finish)
        return (generated, stats)
    }
}

/// A generation request that cannot run.
public struct GenerationError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
