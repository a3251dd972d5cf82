import Foundation

/// llama.cpp's `minimax-m2` (MiniMax-M2), read as `llama_model_minimax_m2` reads it: grouped-query
/// attention with RMSNorms over the whole q and k projections (`attn_q_norm [heads·head_dim]`,
/// `attn_k_norm [kv_heads·head_dim]`), NeoX RoPE over the first `rope.dimension_count` dimensions
/// of each head (the converter writes `rotary_dim` there); every layer MoE (`ffn_*_exps` from
/// the stacked `w1`/`w3`/`w2`), routed by `expert_gating_func` (sigmoid: 2; MiniMax-M2 has no
/// other) with `exp_probs_b` (`e_score_correction_bias`) for choosing only, always renormalised
/// (llama.cpp's graph fixes it; no `expert_weights_scale`). The converter changes no
/// values; the tensors are the shared map's but for the correction bias.
extension GGUFConfigReader {
    /// llama.cpp's name for MiniMax-M2.
    static let miniMaxM2Architecture = "minimax-m2"

    func readMiniMaxM2() throws -> ModelConfig {
        let arch = Self.miniMaxM2Architecture
        func key(_ name: String) -> String { "\(arch).\(name)" }
        let shape = try attentionShape(arch: arch)
        let (layers, hidden, heads, kvHeads, headDim) = (shape.layers, shape.hidden, shape.heads, shape.kvHeads, shape.headDim)
        let rotary = values[key("rope.dimension_count")]?.intValue ?? headDim
        guard rotary >= 2, rotary <= headDim, rotary % 2 == 0 else {
            throw error("rope.dimension_count \(rotary) must be even and at most the head size \(headDim)")
        }
        if let scaling = values[key("rope.scaling.type")]?.stringValue, scaling != "none" {
            throw error("unsupported rope scaling '\(scaling)' for minimax-m2 (only the default RoPE is implemented)")
        }
        guard let embedding = tensors["token_embd.weight"], embedding.dims.count == 2, embedding.dims[0] == hidden else {
            throw error("token_embd.weight is missing or not [\(hidden), vocab]")
        }
        // llama_expert_gating_func_type: 1 softmax, 2 sigmoid (absent: MiniMax-M2's sigmoid).
        let gating = values[key("expert_gating_func")]?.intValue ?? 2
        guard gating == 2 else { throw error("expert_gating_func \(gating): minimax-m2 is implemented with sigmoid gating (2)") }
        let expertCount = try int(key("expert_count"))
        let used = try int(key("expert_used_count"))
        guard expertCount > 0, used >= 1, used <= expertCount else {
            throw error("expert_used_count (\(used)) must be between 1 and expert_count (\(expertCount))")
        }
        var expertWidth: Int?
        for layer in 0..<layers {
            guard let gate = tensors["blk.\(layer).ffn_gate_exps.weight"]?.dims, gate.count == 3, gate[0] == hidden, gate[2] == expertCount,
                  expertWidth == nil || expertWidth == gate[1] else {
                throw error("blk.\(layer).ffn_gate_exps.weight is missing or not [\(hidden), width, \(expertCount)]")
            }
            guard tensors["blk.\(layer).exp_probs_b.bias"] != nil else {
                throw error("blk.\(layer).exp_probs_b.bias is missing (MiniMax-M2 routes with a correction bias)")
            }
            expertWidth = gate[1]
        }
        let width = expertWidth!

        var config = modelConfig(
            arch: arch, architecture: .miniMaxM2, vocabSize: embedding.dims[1], layers: layers, hidden: hidden, heads: heads,
            kvHeads: kvHeads, headDim: headDim, expertCount: expertCount, expertsPerToken: used,
            expertWidth: width, denseWidth: width, sharedWidth: 0, normTopKProb: true)
        config.rope.partialRotaryFactor = Double(rotary) / Double(headDim)
        // The converter writes no expert_weights_scale for this architecture; a scaled file is refused, not misread.
        if let scale = values[key("expert_weights_scale")]?.doubleValue, scale != 0, scale != 1 {
            throw error("expert_weights_scale \(scale) is not supported for \(arch) (its router has no scaling)")
        }
        return config
    }
}

extension GGUFNames {
    /// MiniMax-M2's correction bias (`e_score_correction_bias` → `exp_probs_b.bias`), the one
    /// name of llama.cpp's `minimax-m2` the shared map does not give. Empty for other architectures.
    static func miniMaxM2Names(config: ModelConfig) -> [String: GGUFTensorReference] {
        guard config.architecture == .miniMaxM2 else { return [:] }
        let description = config.architecture.definition
        var map: [String: GGUFTensorReference] = [:]
        for layer in 0..<config.layerCount {
            if let bias = description.correctionBiasName(layer) { map[bias] = .init(name: "blk.\(layer).exp_probs_b.bias") }
        }
        return map
    }
}
