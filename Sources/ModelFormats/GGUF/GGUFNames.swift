/// llama.cpp's tensor names (gguf-py's `TensorNameMap`) for the Hugging Face names the
/// models ask for. Routed experts are one stacked tensor per layer and projection in GGUF
/// (`blk.N.ffn_gate_exps.weight`, ggml shape `[cols, rows, experts]`), so an expert's name maps
/// to that tensor and its index.
public struct GGUFTensorReference: Sendable, Equatable {
    /// The GGUF tensor.
    public var name: String
    /// The expert's slice of a stacked tensor; nil for a whole tensor.
    public var expert: Int?
}

enum GGUFNames {
    /// The map from every Hugging Face tensor name `config`'s model can ask for to its GGUF
    /// tensor (names the GGUF file lacks still map; `contains` checks the file).
    static func map(config: ModelConfig) -> [String: GGUFTensorReference] {
        let description = config.architecture.definition
        var map: [String: GGUFTensorReference] = [
            "model.embed_tokens.weight": .init(name: "token_embd.weight"),
            "lm_head.weight": .init(name: "output.weight"),
            "model.norm.weight": .init(name: "output_norm.weight"),
        ]
        for layer in 0..<config.layerCount {
            let hf = "model.layers.\(layer)", blk = "blk.\(layer)"
            map["\(hf).input_layernorm.weight"] = .init(name: "\(blk).attn_norm.weight")
            map["\(hf).post_attention_layernorm.weight"] = .init(name: "\(blk).ffn_norm.weight")
            let attention = description.attentionPrefix(layer)
            for (ours, theirs) in [("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")] {
                map["\(attention).\(ours).weight"] = .init(name: "\(blk).\(theirs).weight")
                map["\(attention).\(ours).bias"] = .init(name: "\(blk).\(theirs).bias")
            }
            map["\(attention).q_norm.weight"] = .init(name: "\(blk).attn_q_norm.weight")
            map["\(attention).k_norm.weight"] = .init(name: "\(blk).attn_k_norm.weight")
            if config.isMoELayer(layer) {
                map[description.routerName(layer)] = .init(name: "\(blk).ffn_gate_inp.weight")
                for expert in 0..<config.expertCount {
                    let names = description.expertTensorNames(layer, expert)
                    map[names.gate] = .init(name: "\(blk).ffn_gate_exps.weight", expert: expert)
                    map[names.up] = .init(name: "\(blk).ffn_up_exps.weight", expert: expert)
                    map[names.down] = .init(name: "\(blk).ffn_down_exps.weight", expert: expert)
                }
                if let shared = description.sharedExpert(config, layer) {
                    for projection in ["gate", "up", "down"] {
                        map["\(shared.prefix).\(projection)_proj.weight"] = .init(name: "\(blk).ffn_\(projection)_shexp.weight")
                    }
                    map[shared.sigmoidGateName] = .init(name: "\(blk).ffn_gate_inp_shexp.weight")
                }
            } else {
                let prefix = description.feedForwardPrefix(layer)
                for projection in ["gate", "up", "down"] {
                    map["\(prefix).\(projection)_proj.weight"] = .init(name: "\(blk).ffn_\(projection).weight")
                }
            }
        }
        map.merge(glmGptOssNames(config: config)) { _, specific in specific }
        map.merge(qwen3NextNames(config: config)) { _, specific in specific } // GGUFQwen3Next.swift
        map.merge(miniMaxM2Names(config: config)) { _, specific in specific } // GGUFMiniMaxM2.swift
        if config.latentAttention != nil { map.merge(latentAttentionMap(config: config)) { _, latent in latent } } // GGUFDeepseek2.swift
        return map
    }
}
