import Foundation
import Testing
import InferenceEngine
import ModelFormats
@testable import MoEModels
import TensorMath

/// gpt-oss beyond the shared fidelity checks (which run on its fixtures too): the sliding
/// window's bounded KV cache, batching, MXFP4 experts against their bf16 twin, and what the
/// memory plan and scheduler count.
@Suite struct GptOssTests {
    static let root = ReferenceFixture.committedRoot
    static let fixtures = ["gptoss-sliding4-sinks", "gptoss-clamp-mqa-tied", "gptoss-mxfp4"]

    func load(_ name: String) throws -> TransformerModel {
        try ModelLoader.loadCheckpoint(at: Self.root.appendingPathComponent(name))
    }

    /// Tokens for a long sequence: many times the fixtures' windows (3-5), so every sliding
    /// layer's rows are moved to the front repeatedly.
    func longPrompt(_ model: TransformerModel, count: Int = 75) -> [Int] {
        (0..<count).map { ($0 * 37 + 11) % model.config.vocabSize }
    }

    /// Token by token, in uneven prefill chunks, and in one step: the same logits, while each
    /// sliding layer holds at most 2 × window rows.
    @Test(arguments: fixtures)
    func windowBoundedCacheGivesTheLogitsOfOneStep(name: String) throws {
        let model = try load(name)
        let prompt = longPrompt(model)
        let whole = try model.forward([SequenceInput(cache: model.makeCache(), tokens: prompt, allLogits: true)])[0]
        let vocab = model.config.vocabSize

        let stepwise = model.makeCache()
        var last: [Float] = []
        for (i, token) in prompt.enumerated() {
            last = try model.forward([SequenceInput(cache: stepwise, tokens: [token])])[0]
            #expect(maxAbsDifference(last, Array(whole[i * vocab..<(i + 1) * vocab])) <= 1e-4, "position \(i)")
        }
        let chunked = model.makeCache()
        var start = 0
        for size in [7, 1, 13, 2, 30, 22] where start < prompt.count {
            let chunk = Array(prompt[start..<min(prompt.count, start + size)])
            last = try model.forward([SequenceInput(cache: chunked, tokens: chunk)])[0]
            start += chunk.count
        }
        #expect(maxAbsDifference(last, Array(whole[(prompt.count - 1) * vocab..<prompt.count * vocab])) <= 1e-4)

        let window = try #require(model.config.slidingWindow)
        let sliding = (0..<model.config.layerCount).filter { stepwise.windows[$0] != nil }
        #expect(!sliding.isEmpty)
        #expect(sliding.allSatisfy { stepwise.windows[$0] == window && stepwise.firstPosition($0) > 0 })
        let rowBytes = model.config.kvHeadCount * model.config.headDim * 4 * 2
        let full = model.config.layerCount - sliding.count
        // Unbounded layers grow by doubling (128 rows for 75 positions); windowed ones stop at 2w.
        #expect(stepwise.byteCount == full * 128 * rowBytes + sliding.count * KVCache.windowRows(window) * rowBytes)
    }

    /// Several sequences (prompts longer than the window, then decode steps) in one batch give
    /// each sequence's logits alone.
    @Test(arguments: fixtures)
    func batchedSequencesMatchEachAlone(name: String) throws {
        let model = try load(name)
        let prompts = [longPrompt(model, count: 23), Array(longPrompt(model, count: 9).reversed()), [5, 3]]
        var alone: [[Float]] = []
        for prompt in prompts {
            let cache = model.makeCache()
            var logits = try model.forward([SequenceInput(cache: cache, tokens: prompt)])[0]
            logits += try model.forward([SequenceInput(cache: cache, tokens: [7])])[0]
            alone.append(logits)
        }
        let caches = prompts.map { _ in model.makeCache() }
        let prefill = try model.forward(zip(caches, prompts).map { SequenceInput(cache: $0, tokens: $1) })
        let decode = try model.forward(caches.map { SequenceInput(cache: $0, tokens: [7]) })
        for i in prompts.indices {
            #expect(maxAbsDifference(alone[i], prefill[i] + decode[i]) <= 1e-4, "sequence \(i)")
        }
    }

    /// The MXFP4 checkpoint (experts as gpt-oss publishes them, run by the MXFP4 kernel) and
    /// its bf16 twin holding exactly the dequantized values give the same logits.
    @Test func mxfp4ExpertsEqualTheirBF16Twin() throws {
        let mxfp4 = try load("gptoss-mxfp4"), twin = try load("gptoss-mxfp4-bf16")
        let prompt = longPrompt(mxfp4, count: 30)
        let a = try mxfp4.forward([SequenceInput(cache: mxfp4.makeCache(), tokens: prompt, allLogits: true)])[0]
        let b = try twin.forward([SequenceInput(cache: twin.makeCache(), tokens: prompt, allLogits: true)])[0]
        if IntegerDotKernels.level == nil {
            #expect(maxAbsDifference(a, b) <= 1e-4)
        } else {
            // The integer-dot MXFP4 kernel rounds the experts' inputs to 8-bit blocks, the twin's
            // bf16 kernels do not: the same exact weights, compared as the int8 stores are.
            let rms = { (v: [Float]) in (v.reduce(0) { $0 + $1 * $1 } / Float(v.count)).squareRoot() }
            let relative = rms(zip(a, b).map { $0 - $1 }) / rms(b)
            print("gptoss-mxfp4 integer-dot vs bf16 twin: relative logit RMS error \(relative), max \(maxAbsDifference(a, b))")
            #expect(relative < 0.05)
        }
        try mxfp4.experts.withExperts(layer: 0, experts: [1]) { _, weights in
            guard case .mxfp4 = weights.gate.storage, case .mxfp4 = weights.down.storage else {
                Issue.record("MXFP4 experts were widened at load instead of kept 4-bit")
                return
            }
            #expect(weights.biases != nil)
        }
    }

    /// The memory plan and the scheduler count a sliding layer's KV at most for its window.
    @Test func kvAccountingBoundsSlidingLayers() throws {
        let config = try load("gptoss-clamp-mqa-tied").config // layers: full, sliding, sliding, full; window 3
        let row = config.kvHeadCount * config.headDim * 4 * 2
        #expect(TransformerModel.kvBytesPerToken(config, precision: .f32) == 2 * row)
        let window = TransformerModel.kvWindow(config, precision: .f32)
        #expect(window.positions == 6 && window.bytesPerToken == 2 * row)
        #expect(TransformerModel.kvBytes(config, precision: .f32, positions: 100) == 100 * 2 * row + 6 * 2 * row)
        #expect(TransformerModel.kvBytes(config, precision: .f32, positions: 4) == 4 * 4 * row)
        let limits = SchedulerLimits(maxRunningSequences: 2, tokenBudgetPerStep: 64, kvCacheBudgetBytes: 1 << 30,
                                     kvBytesPerToken: 2 * row, maxWaitingRequests: 4, contextLength: 256,
                                     kvWindowPositions: window.positions, kvWindowBytesPerToken: window.bytesPerToken)
        #expect(Scheduler(limits: limits).reservation(promptTokens: 90, maxTokens: 10)
                == TransformerModel.kvBytes(config, precision: .f32, positions: 100))
    }

    /// transformers' GptOssConfig defaults: no rope_scaling is YaRN (factor 32 over 4096, no
    /// truncation; the gptoss-yarn-default fixture checks the logits), no layer_types alternate.
    @Test func configDefaultsAreTransformers() throws {
        let url = Self.root.appendingPathComponent("gptoss-sliding4-sinks/config.json")
        var json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        json["rope_scaling"] = NSNull()
        json.removeValue(forKey: "layer_types")
        json.removeValue(forKey: "swiglu_limit")
        let config = try ModelConfig.parse(try JSONSerialization.data(withJSONObject: json), file: "config.json")
        #expect(config.rope.kind == .yarn)
        #expect(config.rope.yarn == RopeParameters.Yarn(factor: 32, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1, truncate: false))
        #expect(config.layerTypes == ["sliding_attention", "full_attention", "sliding_attention"])
        #expect(config.swigluLimit == 7 && config.swigluAlpha == 1.702)
        json["layer_types"] = ["sliding_attention"]
        json["rope_scaling"] = ["rope_type": "default"]
        #expect(throws: ModelFormatError.self) { try ModelConfig.parse(try JSONSerialization.data(withJSONObject: json), file: "config.json") }
    }
}
