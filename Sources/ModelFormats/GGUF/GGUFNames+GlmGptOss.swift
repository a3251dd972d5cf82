extension GGUFNames {
    /// Where llama.cpp's `glm4moe` and `gpt-oss` names differ from the shared map: both keep the
    /// post-attention norm as `post_attention_norm` (not `ffn_norm`); GLM's selection bias is
    /// `exp_probs_b.bias`; gpt-oss has `attn_sinks`, the router's bias `ffn_gate_inp.bias`, and
    /// its fused experts split into the stacked `ffn_{gate,up,down}_exps` (with `.bias` slices),
    /// served under per-expert names (`GGUFModel.expertNames`). Empty for other architectures.
    static func glmGptOssNames(config: ModelConfig) -> [String: GGUFTensorReference] {
        guard config.architecture == .glm4Moe || config.architecture == .gptOss else { return [:] }
        let description = config.architecture.definition
        var map: [String: GGUFTensorReference] = [:]
        for layer in 0..<config.layerCount {
            let hf = "model.layers.\(layer)", blk = "blk.\(layer)"
            map["\(hf).post_attention_layernorm.weight"] = .init(name: "\(blk).post_attention_norm.weight")
            if let bias = description.correctionBiasName(layer) { map[bias] = .init(name: "\(blk).exp_probs_b.bias") }
            guard config.architecture == .gptOss else { continue }
            map["\(description.attentionPrefix(layer)).sinks"] = .init(name: "\(blk).attn_sinks.weight")
            if let routerBias = description.routerBiasName?(layer) { map[routerBias] = .init(name: "\(blk).ffn_gate_inp.bias") }
            for expert in 0..<config.expertCount {
                let names = GGUFModel.expertNames(layer: layer, expert: expert)
                for (projection, name) in [("gate", names.gate), ("up", names.up), ("down", names.down)] {
                    map[name] = .init(name: "\(blk).ffn_\(projection)_exps.weight", expert: expert)
                    map[name.replacingOccurrences(of: ".weight", with: ".bias")] = .init(name: "\(blk).ffn_\(projection)_exps.bias", expert: expert)
                }
            }
        }
        return map
    }
}
