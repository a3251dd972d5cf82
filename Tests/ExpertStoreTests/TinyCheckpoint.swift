import Foundation
import ModelFormats
import TensorMath

/// Writes small random Hugging Face checkpoints (config.json, model.safetensors, a stub
/// tokenizer.json) so the store tests do not depend on fixtures from elsewhere.
enum TinyCheckpoint {
    enum Kind { case mixtral, qwen2Moe }

    static let hidden = 64, expertWidth = 32, experts = 4, layers = 2, vocab = 97, heads = 4, kvHeads = 2

    /// A fresh temporary directory, removed by the caller.
    static func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("expert-store-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// Writes a checkpoint of `kind` with weights in `dtype` into `directory/name`.
    @discardableResult
    static func write(_ kind: Kind, dtype: TensorDType, in directory: URL, name: String = "hf", seed: UInt64 = 7) throws -> URL {
        let url = directory.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        var rng = SplitMix64(seed: seed)
        var writer = SafetensorsWriter()
        let headDim = hidden / heads
        func matrix(_ name: String, _ rows: Int, _ cols: Int, scale: Float = 0.15) {
            writer.add(name, shape: [rows, cols], values: (0..<rows * cols).map { _ in rng.nextFloat(in: -1..<1) * scale }, dtype: dtype)
        }
        func norm(_ name: String, _ count: Int) {
            writer.add(name, shape: [count], values: (0..<count).map { _ in 1 + rng.nextFloat(in: -1..<1) * 0.1 }, dtype: dtype)
        }
        matrix("model.embed_tokens.weight", vocab, hidden, scale: 1)
        matrix("lm_head.weight", vocab, hidden)
        norm("model.norm.weight", hidden)
        for layer in 0..<layers {
            let p = "model.layers.\(layer)"
            norm("\(p).input_layernorm.weight", hidden)
            norm("\(p).post_attention_layernorm.weight", hidden)
            matrix("\(p).self_attn.q_proj.weight", heads * headDim, hidden)
            matrix("\(p).self_attn.k_proj.weight", kvHeads * headDim, hidden)
            matrix("\(p).self_attn.v_proj.weight", kvHeads * headDim, hidden)
            matrix("\(p).self_attn.o_proj.weight", hidden, heads * headDim)
            switch kind {
            case .mixtral:
                matrix("\(p).block_sparse_moe.gate.weight", experts, hidden, scale: 1)
                for e in 0..<experts {
                    matrix("\(p).block_sparse_moe.experts.\(e).w1.weight", expertWidth, hidden)
                    matrix("\(p).block_sparse_moe.experts.\(e).w3.weight", expertWidth, hidden)
                    matrix("\(p).block_sparse_moe.experts.\(e).w2.weight", hidden, expertWidth)
                }
            case .qwen2Moe:
                norm("\(p).self_attn.q_proj.bias", heads * headDim)
                norm("\(p).self_attn.k_proj.bias", kvHeads * headDim)
                norm("\(p).self_attn.v_proj.bias", kvHeads * headDim)
                if layer == 0 { // mlp_only_layers: [0] — a dense MLP, which must land in dense.bin
                    matrix("\(p).mlp.gate_proj.weight", 96, hidden)
                    matrix("\(p).mlp.up_proj.weight", 96, hidden)
                    matrix("\(p).mlp.down_proj.weight", hidden, 96)
                } else {
                    matrix("\(p).mlp.gate.weight", experts, hidden, scale: 1)
                    for e in 0..<experts {
                        matrix("\(p).mlp.experts.\(e).gate_proj.weight", expertWidth, hidden)
                        matrix("\(p).mlp.experts.\(e).up_proj.weight", expertWidth, hidden)
                        matrix("\(p).mlp.experts.\(e).down_proj.weight", hidden, expertWidth)
                    }
                    matrix("\(p).mlp.shared_expert.gate_proj.weight", 32, hidden)
                    matrix("\(p).mlp.shared_expert.up_proj.weight", 32, hidden)
                    matrix("\(p).mlp.shared_expert.down_proj.weight", hidden, 32)
                    matrix("\(p).mlp.shared_expert_gate.weight", 1, hidden)
                }
            }
        }
        try writer.write(to: url.appendingPathComponent("model.safetensors"))
        let dtypeName = dtype == .bf16 ? "bfloat16" : "float32"
        var config: [String: Any] = [
            "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kvHeads,
            "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128,
            "num_experts_per_tok": 2, "tie_word_embeddings": false, "torch_dtype": dtypeName, "bos_token_id": 1, "eos_token_id": 2,
        ]
        switch kind {
        case .mixtral:
            config["architectures"] = ["MixtralForCausalLM"]; config["model_type"] = "mixtral"
            config["num_local_experts"] = experts; config["intermediate_size"] = expertWidth
        case .qwen2Moe:
            config["architectures"] = ["Qwen2MoeForCausalLM"]; config["model_type"] = "qwen2_moe"
            config["num_experts"] = experts; config["moe_intermediate_size"] = expertWidth; config["intermediate_size"] = 96
            config["shared_expert_intermediate_size"] = 32; config["decoder_sparse_step"] = 1; config["mlp_only_layers"] = [0]
            config["norm_topk_prob"] = false
        }
        try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys]).write(to: url.appendingPathComponent("config.json"))
        try Data(#"{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}"#.utf8)
            .write(to: url.appendingPathComponent("tokenizer.json"))
        return url
    }
}
