import Foundation
import Testing
@testable import ModelFormats

@Suite struct ModelConfigTests {
    let hubStyle = """
    {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "vocab_size": 151, "hidden_size": 32,
     "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 1000000.0,
     "torch_dtype": "bfloat16", "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
     "intermediate_size": 48, "shared_expert_intermediate_size": 24, "norm_topk_prob": false,
     "decoder_sparse_step": 2, "mlp_only_layers": [], "rms_norm_eps": 1e-6, "eos_token_id": [1, 2],
     "tie_word_embeddings": false, "max_position_embeddings": 128}
    """

    @Test func hubStyleConfig() throws {
        let config = try ModelConfig.parse(Data(hubStyle.utf8), file: "config.json")
        #expect(config.architecture == .qwen2Moe)
        #expect(config.ropeTheta == 1_000_000)
        #expect(config.dtypeName == "bfloat16")
        #expect(config.headDim == 8 && config.kvHeadCount == 2)
        #expect(config.eosTokenIds == [1, 2])
        #expect(config.moeLayers == [1]) // every second layer
        #expect(config.sharedExpertIntermediateSize == 24 && config.denseIntermediateSize == 48)
    }

    @Test func newStyleConfigWithRopeParameters() throws {
        let json = """
        {"architectures": ["MixtralForCausalLM"], "vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": null, "dtype": "bfloat16",
         "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "num_local_experts": 4,
         "num_experts_per_tok": 1, "intermediate_size": 16, "sliding_window": null, "eos_token_id": 2}
        """
        let config = try ModelConfig.parse(Data(json.utf8), file: "config.json")
        #expect(config.architecture == .mixtral && config.ropeTheta == 10_000 && config.headDim == 8)
        #expect(config.slidingWindow == nil && config.normTopKProb && config.layerCount == 1)
        #expect(config.eosTokenIds == [2] && config.dtypeName == "bfloat16")
    }

    @Test func errorsNameTheFileAndTheKey() {
        #expect(throws: ModelFormatError.self) { try ModelConfig.parse(Data("[1]".utf8), file: "x/config.json") }
        do {
            _ = try ModelConfig.parse(Data(hubStyle.replacingOccurrences(of: "\"num_experts\": 8,", with: "").utf8), file: "x/config.json")
            Issue.record("expected an error")
        } catch {
            #expect("\(error)" == "x/config.json: missing or non-integer 'num_experts'")
        }
        do {
            _ = try ModelConfig.parse(Data(hubStyle.replacingOccurrences(of: "\"rope_theta\": 1000000.0,", with: "\"rope_scaling\": {\"type\": \"longrope\"},").utf8), file: "c.json")
            Issue.record("expected an error")
        } catch {
            #expect("\(error)".contains("unsupported rope scaling 'longrope'"))
        }
    }
}
