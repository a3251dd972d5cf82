import Foundation
import Testing
@testable import ModelFormats

/// Qwen3-Next's config.json as published (hub style: `full_attention_interval`, top-level
/// `partial_rotary_factor`) and as transformers 5 writes it (`layer_types`, `rope_parameters`),
/// with transformers' defaults where keys are absent.
@Suite struct Qwen3NextConfigTests {
    static let published = """
    {"architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next", "vocab_size": 151936, "hidden_size": 2048,
     "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
     "intermediate_size": 5120, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
     "num_experts": 512, "num_experts_per_tok": 10, "norm_topk_prob": true, "decoder_sparse_step": 1,
     "mlp_only_layers": [], "full_attention_interval": 4, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
     "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_value_head_dim": 128,
     "partial_rotary_factor": 0.25, "rope_theta": 10000000, "rope_scaling": null, "rms_norm_eps": 1e-06,
     "max_position_embeddings": 262144, "tie_word_embeddings": false, "torch_dtype": "bfloat16"}
    """

    @Test func publishedConfigReadsAsTransformersDoes() throws {
        let config = try ModelConfig.parse(Data(Self.published.utf8), file: "config.json")
        let qwen = config.architecture.definition
        #expect(config.architecture == .qwen3Next && qwen.modelType == "qwen3_next")
        let linear = try #require(config.linearAttention)
        // Every fourth layer is full attention (3, 7, ..., 47); the rest are gated delta-nets.
        #expect(linear.layers.count == 36 && !linear.layers.contains(3) && linear.layers.contains(0) && !linear.layers.contains(47))
        #expect(config.kvLayerCount == 12)
        #expect(linear.keyWidth == 2048 && linear.valueWidth == 4096 && linear.convChannels == 8192)
        #expect(config.headDim == 256 && config.rope.partialRotaryFactor == 0.25 && RopeParameters.Kind.default == config.rope.kind)
        #expect(qwen.attention(config) == AttentionSpec(qkNormalization: .perHead, requiresBias: false, outputGate: true))
        #expect(qwen.router(config) == RouterSpec(scoring: .softmax, topK: 10, renormalize: true))
        #expect(qwen.sharedExpert(config, 0) == SharedExpertSpec(prefix: "model.layers.0.mlp.shared_expert", width: 512,
                                                                 sigmoidGateName: "model.layers.0.mlp.shared_expert_gate.weight"))
        #expect(qwen.normWeightOffset == 1 && config.moeLayers.count == 48)
        // One sequence's state: 36 layers × (32 heads × 128 × 128 + 3 × 8192) floats, about 75 MiB.
        #expect(linear.stateBytesPerSequence == 36 * (32 * 128 * 128 + 3 * 8192) * 4)
    }

    @Test func layerTypesAndRopeParametersAndDefaults() throws {
        let json = """
        {"architectures": ["Qwen3NextForCausalLM"], "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 3,
         "num_attention_heads": 2, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
         "intermediate_size": 12, "layer_types": ["full_attention", "linear_attention", "linear_attention"],
         "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}}
        """
        let config = try ModelConfig.parse(Data(json.utf8), file: "config.json")
        let linear = try #require(config.linearAttention)
        #expect(linear.layers == [1, 2])
        #expect(linear.keyHeadCount == 16 && linear.valueHeadCount == 32 && linear.keyHeadDim == 128 && linear.convKernel == 4)
        #expect(config.headDim == 256 && config.rope.partialRotaryFactor == 0.5 && config.normTopKProb && config.sharedExpertIntermediateSize == 512)
    }

    @Test(arguments: [
        (#""layer_types": ["full_attention", "sliding_attention"]"#, "unsupported layer type 'sliding_attention'"),
        (#""layer_types": ["full_attention"]"#, "layer_types has 1 entries for 2 layers"),
        (#""linear_num_key_heads": 3, "linear_num_value_heads": 4"#, "must be a positive multiple of linear_num_key_heads"),
        (#""partial_rotary_factor": 0.1, "head_dim": 8"#, "RoPE needs an even number"),
    ])
    func badConfigsGiveOneClearError(keys: String, message: String) {
        let json = """
        {"architectures": ["Qwen3NextForCausalLM"], "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
         "num_attention_heads": 2, "rope_theta": 10000.0, "num_experts": 4, "num_experts_per_tok": 2,
         "moe_intermediate_size": 8, "intermediate_size": 12, \(keys)}
        """
        do {
            _ = try ModelConfig.parse(Data(json.utf8), file: "config.json")
            Issue.record("expected an error containing \(message)")
        } catch {
            #expect("\(error)".contains(message), "\(error)")
        }
    }
}
