import Foundation
import Testing
@testable import ModelFormats

/// The architecture seam: each architecture's file reads its own keys and states its router,
/// attention switches and MoE placement as data.
@Suite struct ArchitectureDescriptionTests {
    @Test func softmaxRouterSelectsAndRenormalises() {
        var logits: [Float] = [1, 3, 2, 0]
        let plain = RouterSpec(scoring: .softmax, topK: 2, renormalize: false).route(&logits, count: 4)
        let total = [1, 3, 2, 0].map { expf(Float($0)) }.reduce(0, +)
        #expect(plain.experts == [1, 2])
        #expect(abs(plain.weights[0] - expf(3) / total) < 1e-6 && abs(plain.weights[1] - expf(2) / total) < 1e-6)

        var again: [Float] = [1, 3, 2, 0]
        let renormalised = RouterSpec(scoring: .softmax, topK: 2, renormalize: true).route(&again, count: 4)
        #expect(renormalised.experts == [1, 2])
        #expect(abs(renormalised.weights.reduce(0, +) - 1) < 1e-6)
        // The predictor asks the same rule for a wider selection: best first, the routed ones leading.
        #expect(RouterSpec(scoring: .softmax, topK: 2, renormalize: true).select(again, count: 4, k: 3) == [1, 2, 0])
    }

    @Test func olmoeReadsItsOwnKeys() throws {
        let json = """
        {"architectures": ["OlmoeForCausalLM"], "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
         "num_attention_heads": 2, "rope_theta": 10000.0, "num_experts": 8, "num_experts_per_tok": 2,
         "intermediate_size": 12, "clip_qkv": 4.5, "norm_topk_prob": true}
        """
        let config = try ModelConfig.parse(Data(json.utf8), file: "config.json")
        let olmoe = config.architecture.definition
        #expect(olmoe.modelType == "olmoe" && config.expertCount == 8 && config.expertIntermediateSize == 12)
        #expect(olmoe.attention(config) == AttentionSpec(qkNormalization: .wholeProjection, requiresBias: false, clipQKV: 4.5))
        #expect(olmoe.router(config) == RouterSpec(scoring: .softmax, topK: 2, renormalize: true))
        #expect(config.moeLayers == [0, 1] && olmoe.sharedExpert(config, 0) == nil)
    }

    @Test func qwen2MoeHasAGatedSharedExpertAndDenseLayers() throws {
        let json = """
        {"architectures": ["Qwen2MoeForCausalLM"], "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 4,
         "num_attention_heads": 2, "rope_theta": 10000.0, "num_experts": 8, "num_experts_per_tok": 2,
         "moe_intermediate_size": 12, "intermediate_size": 40, "shared_expert_intermediate_size": 24,
         "mlp_only_layers": [3], "decoder_sparse_step": 1}
        """
        let config = try ModelConfig.parse(Data(json.utf8), file: "config.json")
        let qwen = config.architecture.definition
        #expect(config.moeLayers == [0, 1, 2] && config.denseIntermediateSize == 40)
        #expect(qwen.sharedExpert(config, 1) == SharedExpertSpec(prefix: "model.layers.1.mlp.shared_expert", width: 24,
                                                                 sigmoidGateName: "model.layers.1.mlp.shared_expert_gate.weight"))
        #expect(qwen.attention(config).requiresBias && qwen.expertWidthKey == "moe_intermediate_size")
        #expect(qwen.router(config) == RouterSpec(scoring: .softmax, topK: 2, renormalize: false))
    }
}
