import Foundation
import InferenceEngine
import TensorMath

/// What one token's draw costs the sampler at real vocabulary sizes (`moe-serve bench kernels
/// --sampler`): every server step pays it once per sequence, after the LM head.
///
/// Why: until session 34 any truncation (llama.cpp's `/completion` defaults: top-k 40, top-p
/// 0.95, min-p 0.05) sorted the whole vocabulary per token, O(V log V) with a closure per
/// comparison. The `whole_sort` column times that sort alone, as the yardstick; the others time
/// `TokenSampler.sample` as it is now.
public struct SamplerBenchmark: Sendable, MedianTimed {
    /// Vocabulary sizes: the demo's, OLMoE's, Qwen3's and gpt-oss's.
    public var vocabularies = [4_096, 50_304, 151_936, 201_088]
    /// Timed repetitions of each measurement (each one a batch of `drawsPerRepetition` draws).
    public var repetitions = 15
    /// Draws per timed repetition.
    public var drawsPerRepetition = 20

    public init() {}

    /// One vocabulary's times, in microseconds per draw.
    public struct Row: Encodable, Sendable {
        public var vocabulary: Int
        /// top-k 40, top-p 0.95, min-p 0.05, temperature 0.8 (llama.cpp's `/completion` defaults).
        public var llamaDefaultsMicroseconds: Double
        /// top-p 0.95 alone (what an OpenAI client that sends `top_p` gets).
        public var topPMicroseconds: Double
        /// min-p 0.05 alone.
        public var minPMicroseconds: Double
        /// No truncation (the OpenAI routes' defaults): a softmax draw, no sort.
        public var untruncatedMicroseconds: Double
        /// Greedy (temperature 0): an argmax.
        public var greedyMicroseconds: Double
        /// The whole vocabulary sorted by logit with a closure, as every truncated draw did before.
        public var wholeSortMicroseconds: Double
        enum CodingKeys: String, CodingKey {
            case vocabulary, llamaDefaultsMicroseconds = "llama_defaults_us", topPMicroseconds = "top_p_us"
            case minPMicroseconds = "min_p_us", untruncatedMicroseconds = "untruncated_us", greedyMicroseconds = "greedy_us"
            case wholeSortMicroseconds = "whole_sort_us"
        }
    }

    /// Runs every measurement; returns the rows and a table for people.
    public func run() -> (rows: [Row], table: String) {
        var rows: [Row] = []
        var table = "| vocabulary | llama.cpp defaults µs | top-p 0.95 µs | min-p 0.05 µs | no truncation µs | greedy µs | whole sort µs |\n|---|---|---|---|---|---|---|\n"
        for vocabulary in vocabularies {
            // Logits shaped like a language model's: a few likely tokens over a long tail.
            var random = SplitMix64(seed: UInt64(vocabulary))
            let logits: [Float] = (0..<vocabulary).map { _ in
                let u = Float(random.nextUnitDouble())
                return -8 * u + (u < 0.001 ? 12 : 0)
            }
            func perDraw(_ configure: (inout SamplingParameters) -> Void) -> Double {
                var parameters = SamplingParameters()
                parameters.seed = 1
                configure(&parameters)
                var sampler = TokenSampler(parameters: parameters, prompt: [])
                return median {
                    for _ in 0..<drawsPerRepetition { _ = sampler.sample(logits, logprobs: false) }
                } / Double(drawsPerRepetition) * 1e6
            }
            let defaults = perDraw { $0.temperature = 0.8; $0.topK = 40; $0.topP = 0.95; $0.minP = 0.05 }
            let topP = perDraw { $0.temperature = 0.8; $0.topP = 0.95 }
            let minP = perDraw { $0.temperature = 0.8; $0.minP = 0.05 }
            let untruncated = perDraw { $0.temperature = 0.8 }
            let greedy = perDraw { $0.temperature = 0 }
            var sink = 0
            let wholeSort = median {
                for _ in 0..<drawsPerRepetition { sink &+= logits.indices.sorted { logits[$0] > logits[$1] }[0] }
            } / Double(drawsPerRepetition) * 1e6
            precondition(sink >= 0)
            rows.append(Row(vocabulary: vocabulary, llamaDefaultsMicroseconds: defaults, topPMicroseconds: topP,
                            minPMicroseconds: minP, untruncatedMicroseconds: untruncated, greedyMicroseconds: greedy,
                            wholeSortMicroseconds: wholeSort))
            table += String(format: "| %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n",
                            vocabulary, defaults, topP, minP, untruncated, greedy, wholeSort)
        }
        return (rows, table)
    }
}
