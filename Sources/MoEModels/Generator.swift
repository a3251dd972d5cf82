import Foundation
import TensorMath

/// Picks the next token from logits: greedy at temperature 0, otherwise a seeded draw from
/// the softmax of `logits / temperature`.
public struct Sampler: Sendable {
    public let temperature: Float
    private var random: SplitMix64

    public init(temperature: Float, seed: UInt64) {
        self.temperature = temperature
        random = SplitMix64(seed: seed)
    }

    /// The next token for `logits`.
    public mutating func sample(_ logits: [Float]) -> Int {
        if temperature == 0 { return logits.withUnsafeBufferPointer { Ops.argmax($0.baseAddress!, count: $0.count) } }
        var scaled = logits.map { $0 / temperature }
        scaled.withUnsafeMutableBufferPointer { Ops.softmax($0.baseAddress!, count: $0.count) }
        var remaining = random.nextUnitDouble()
        for (token, p) in scaled.enumerated() {
            remaining -= Double(p)
            if remaining <= 0 { return token }
        }
        return scaled.count - 1
    }
}

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

/// A single-sequence generation loop: prefill the prompt in one step, then decode one token
/// per step. (The multi-sequence engine batches many of these.)
public struct Generator {
    public let model: TransformerModel
    public var sampler: Sampler

    public init(model: TransformerModel, sampler: Sampler) {
        self.model = model
        self.sampler = sampler
    }

    /// Generates up to `maxTokens` tokens after `prompt`, stopping early at a `stopTokens` id
    /// (which is included in the output) or at the context limit.
    public mutating func generate(prompt: [Int], maxTokens: Int, stopTokens: Set<Int>,
                                  onToken: (Int) -> Void = { _ in }) throws -> (tokens: [Int], stats: GenerationStats) {
        guard !prompt.isEmpty else { throw GenerationError("the prompt is empty") }
        guard prompt.count < model.config.maxPositionEmbeddings else {
            throw GenerationError("the prompt has \(prompt.count) tokens; the model's context is \(model.config.maxPositionEmbeddings)")
        }
        let cache = model.makeCache()
        var generated: [Int] = []
        var finish = "length"
        let prefillStart = DispatchTime.now().uptimeNanoseconds
        var logits = try model.forward([SequenceInput(cache: cache, tokens: prompt)])[0]
        let prefillEnd = DispatchTime.now().uptimeNanoseconds
        while generated.count < maxTokens {
            let token = sampler.sample(logits)
            generated.append(token)
            onToken(token)
            if stopTokens.contains(token) { finish = "stop"; break }
            if cache.length >= model.config.maxPositionEmbeddings { finish = "context"; break }
            if generated.count == maxTokens { break }
            logits = try model.forward([SequenceInput(cache: cache, tokens: [token])])[0]
        }
        let decodeEnd = DispatchTime.now().uptimeNanoseconds
        let prefillSeconds = Double(prefillEnd - prefillStart) / 1e9
        let decodeSeconds = Double(decodeEnd - prefillEnd) / 1e9
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
