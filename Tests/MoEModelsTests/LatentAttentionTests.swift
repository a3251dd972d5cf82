import Foundation
import Testing
import ModelFormats
@testable import MoEModels

/// Multi-head latent attention's KV cache: one latent and one rotary key per token and layer.
@Suite struct LatentAttentionTests {
    /// DeepSeek-V3's published config.json (the keys that size attention).
    static let deepseekV3 = """
    {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168,
     "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
     "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5,
     "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
     "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8, "moe_layer_freq": 1,
     "first_k_dense_replace": 3, "norm_topk_prob": true, "scoring_func": "sigmoid", "max_position_embeddings": 163840,
     "rms_norm_eps": 1e-06, "rope_theta": 10000, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
     "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                      "original_max_position_embeddings": 4096, "type": "yarn"},
     "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}}
    """

    @Test func deepseekV3CachesSeventyTimesLessThanFullHeads() throws {
        let config = try ModelConfig.parse(Data(Self.deepseekV3.utf8), file: "config.json")
        let latent = try #require(config.latentAttention)
        #expect(latent.cachedValuesPerToken == 576 && config.moeLayers.count == 58 && config.routerGroups?.groupCount == 8)
        let mla = TransformerModel.kvBytesPerToken(config, precision: .f16)
        #expect(mla == 61 * 576 * 2) // 70,272 bytes per token
        // Expanded keys (qk_nope + qk_rope) and values (v_head) for every head, as a standard cache would hold them.
        let fullHeads = 61 * 128 * (latent.queryHeadDim + latent.valueDim) * 2
        #expect(fullHeads / mla == 71)
    }

    @Test func cacheHoldsTheLatentAndTheRotaryKeyOnly() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/models/deepseekv3-qlora-groups-yarn")
        let model = try ModelLoader.loadCheckpoint(at: root)
        let cache = model.makeCache()
        _ = try model.forward([SequenceInput(cache: cache, tokens: [1, 2, 3, 4, 5])])
        #expect(cache.rowWidth == 32 && cache.valueRowWidth == 8)
        #expect(cache.byteCount == 3 * cache.capacity * (32 + 8) * 4)
        #expect(model.kvBytesPerToken == 3 * (32 + 8) * 4)
    }
}

/// `synth --shape deepseek-v2-lite`: the tensors of DeepSeek-V2-Lite's shape (not written here: 31 GB).
@Suite struct SyntheticDeepseekShapeTests {
    @Test func deepseekV2LiteHasItsPublishedParameterCount() throws {
        let shape = try #require(SyntheticCheckpoint.shapes.first { $0.name == "deepseek-v2-lite" })
        let tensors = try SyntheticCheckpoint(shape: shape, seed: 1, vocabSize: 102400, eosTokenId: nil).tensors()
        let parameters = tensors.reduce(0) { $0 + $1.shape.reduce(1, *) }
        #expect(abs(Double(parameters) / 15.7e9 - 1) < 0.01, "\(parameters) parameters")
        #expect(tensors.contains { $0.name == "model.layers.0.mlp.gate_proj.weight" })   // first layer dense
        #expect(tensors.contains { $0.name == "model.layers.26.mlp.shared_experts.up_proj.weight" })
        #expect(tensors.contains { $0.name == "model.layers.1.self_attn.kv_b_proj.weight" && $0.shape == [16 * 256, 512] })
        #expect(Set(tensors.map(\.name)).count == tensors.count)
    }
}
