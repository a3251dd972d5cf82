import Foundation
import Testing
import ModelFormats
@testable import MoEModels

/// llama.cpp's `qwen3next` and `minimax-m2` GGUF files (converted by llama.cpp's converter and
/// quantised by `llama-quantize`, `scripts/gguf/make_qwen3next_minimax_fixtures.py`) against
/// llama.cpp's next-token distributions in Tests/Fixtures/gguf/qwen3next-minimax-reference.json,
/// with the criterion and the emulation of llama.cpp's arithmetic of `GGUFLlamaCppTests`.
@Suite struct GGUFQwen3NextMiniMaxTests {
    /// As `LlamaCppReference`, with the prompts per tokenizer (the two families tokenize apart).
    struct Reference: Decodable {
        struct Model: Decodable, CustomTestStringConvertible, Sendable {
            let file: String
            let architecture: String
            let type: String
            /// The key of `prompts` this file's steps index.
            let prompts: String
            let steps: [LlamaCppReference.Step]
            var testDescription: String { file }
        }
        let prompts: [String: [[Int]]]
        let models: [Model]
    }

    static let reference: Reference? = try? JSONDecoder().decode(
        Reference.self, from: Data(contentsOf: LlamaCppReference.root.appendingPathComponent("qwen3next-minimax-reference.json")))

    @Test func referencesArePresent() throws {
        let reference = try #require(Self.reference)
        #expect(Set(reference.models.map(\.architecture)) == [Architecture.qwen3Next.rawValue, Architecture.miniMaxM2.rawValue])
    }

    /// The configuration llama.cpp's loader reads: the appended next-token-prediction block left
    /// out, delta-nets where `attention.recurrent_layers` says, partial rotary from
    /// `rope.dimension_count`, the shared expert; the tensors the converter regrouped served
    /// under the names the layers ask for.
    @Test func qwen3NextConfigurationIsLlamaCpps() throws {
        let gguf = try GGUFModel(url: LlamaCppReference.root.appendingPathComponent("qwen3next-Q8_0.gguf"))
        let config = gguf.config
        #expect(gguf.metadata["qwen3next.block_count"]?.intValue == 5)
        #expect(config.architecture == .qwen3Next)
        #expect(config.layerCount == 4)
        #expect(config.linearAttention == LinearAttentionConfig(layers: [0, 1, 2], keyHeadCount: 2, valueHeadCount: 4,
                                                                keyHeadDim: 16, valueHeadDim: 16, convKernel: 4))
        #expect(config.headDim == 32 && config.rope.partialRotaryFactor == 0.25)
        #expect(config.moeLayers == [0, 1, 2, 3])
        #expect(config.sharedExpertIntermediateSize == 64 && config.normTopKProb)
        #expect(gguf.reference("model.layers.0.linear_attn.in_proj_qkv.weight")?.name == "blk.0.attn_qkv.weight")
        #expect(gguf.reference("model.layers.0.linear_attn.in_proj_z.weight")?.name == "blk.0.attn_gate.weight")
        #expect(gguf.contains("model.layers.0.linear_attn.in_proj_qkv.weight"))
        #expect(!gguf.contains("model.layers.0.linear_attn.in_proj_qkvz.weight"))
        #expect(gguf.contains("model.layers.3.mlp.shared_expert_gate.weight"))
        // ssm_a = −exp(A_log) comes back as A_log; the folded +1 comes off the norms but the gated one.
        let a = try gguf.vector("model.layers.0.linear_attn.A_log", count: 4)
        #expect(a.allSatisfy { $0.isFinite && $0 > -5 && $0 < 5 })
        let inputNorm = try gguf.vector("model.layers.0.input_layernorm.weight", count: 64)
        #expect(abs(inputNorm.reduce(0, +) / 64) < 0.1) // stored as 1 + w with w ~ N(0, 0.1)
        let gatedNorm = try gguf.vector("model.layers.0.linear_attn.norm.weight", count: 16)
        #expect(abs(gatedNorm.reduce(0, +) / 16 - 1) < 0.2) // stored as it is, around 1
        // The skipped block's tensors are never loaded, so they are not resident bytes.
        let mtpBytes = gguf.tensors.values.map(\.info).filter { $0.name.hasPrefix("blk.4.") && !$0.name.contains("_exps.") }.reduce(0) { $0 + $1.byteCount }
        let allDense = gguf.tensors.values.map(\.info).filter { !$0.name.contains("_exps.") }.reduce(0) { $0 + $1.byteCount }
        #expect(mtpBytes > 0)
        #expect(gguf.denseByteCount == allDense - mtpBytes)
    }

    /// MiniMax-M2 as llama.cpp's loader reads it: rotary_dim from `rope.dimension_count`, sigmoid
    /// routing with the correction bias from `exp_probs_b`, q/k norms over the whole projections.
    @Test func miniMaxConfigurationIsLlamaCpps() throws {
        let gguf = try GGUFModel(url: LlamaCppReference.root.appendingPathComponent("minimax-m2-Q8_0.gguf"))
        let config = gguf.config
        #expect(config.architecture == .miniMaxM2)
        #expect(config.layerCount == 3 && config.moeLayers == [0, 1, 2])
        #expect(config.headDim == 32 && config.rope.partialRotaryFactor == 0.5)
        #expect(config.expertCount == 8 && config.expertsPerToken == 2 && config.expertIntermediateSize == 32)
        #expect(gguf.reference("model.layers.1.block_sparse_moe.e_score_correction_bias")?.name == "blk.1.exp_probs_b.bias")
        let up = gguf.reference("model.layers.1.block_sparse_moe.experts.3.w3.weight")
        #expect(up?.name == "blk.1.ffn_up_exps.weight" && up?.expert == 3)
        #expect(try gguf.vector("model.layers.0.self_attn.q_norm.weight", count: 4 * 32).count == 128)
        #expect(try gguf.vector("model.layers.0.self_attn.k_norm.weight", count: 2 * 32).count == 64)
    }

    /// The bound, 0.1, for every file. minimax-m2-Q4_0.gguf's prompt 2 prefix 16 was at 0.129
    /// until the activations were quantised as llama.cpp's Q8_0 (127/amax, f16 block scale); 0.021 since.
    static func bound(_ file: String) -> Double { 0.1 }

    /// At every prefix of every prompt: llama.cpp's top-1 (or its second where its top two are
    /// within 0.05 nats) and each of its top-5 log-probabilities within 0.1 (`bound`).
    @Test(arguments: Self.reference?.models ?? [])
    func nextTokenDistributionMatchesLlamaCpp(model reference: Reference.Model) throws {
        let prompts = try #require(Self.reference?.prompts[reference.prompts])
        let result = try LlamaCppReference.compare(file: LlamaCppReference.root.appendingPathComponent(reference.file),
                                                   architecture: reference.architecture, steps: reference.steps, prompts: prompts,
                                                   bound: Self.bound(reference.file))
        LlamaCppReference.report(reference.file, prefixes: reference.steps.count, result)
    }

    /// The prompt's prefill (the chunked delta rule) and the same tokens fed one at a time (the
    /// recurrent form, as decoding runs) give the same next-token distributions: the same top-1
    /// and logits within 0.1 (not float-exact: the two forms round apart, and the 8-bit rounding
    /// of every Q8_0 product's activations turns a last-bit difference into up to ~0.03).
    @Test func qwen3NextDecodeFollowsPrefill() throws {
        let prompt = try #require(Self.reference?.prompts["qwen3next"]?.first)
        let model = try ModelLoader.load(at: LlamaCppReference.root.appendingPathComponent("qwen3next-Q8_0.gguf"))
        let vocab = model.config.vocabSize
        let whole = try model.forward([SequenceInput(cache: model.makeCache(), tokens: prompt, allLogits: true)])[0]
        let cache = model.makeCache()
        var worst: Float = 0
        for (position, token) in prompt.enumerated() {
            let step = try model.forward([SequenceInput(cache: cache, tokens: [token], allLogits: true)])[0]
            let prefilled = whole[(position * vocab)..<((position + 1) * vocab)]
            for i in 0..<vocab { worst = max(worst, abs(step[i] - prefilled[position * vocab + i])) }
            #expect(step.indices.max { step[$0] < step[$1] } == prefilled.indices.max { prefilled[$0] < prefilled[$1] }.map { $0 - position * vocab },
                    "position \(position): the decoded top-1 differs from the prefill's")
        }
        #expect(worst < 0.1, "token-by-token logits differ from the prefill's by \(worst)")
    }

    /// `pack FILE.gguf STORE`: the store computes exactly the file's logits.
    @Test(arguments: (Self.reference?.models ?? []).map(\.file))
    func packedStoreGivesTheFilesLogits(file: String) throws {
        let (a, b) = try LlamaCppReference.fileAndPackedStoreLogits(file)
        #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "\(file): the store's logits differ from the file's")
    }
}
