/// llama.cpp's `deepseek2` architecture (DeepSeek-V2/V2-Lite/V3/R1, Kimi-K2 as its converter
/// writes them): the configuration from its metadata and the names of its multi-head latent
/// attention (MLA) tensors.
///
/// What the converter does (`conversion/deepseek.py`) and how it is undone:
/// - `kv_b_proj [heads·(nope + v_head), kv_lora]` is split per head into `attn_k_b`, transposed
///   (ggml `[nope, kv_lora, heads]`: head h is `W_UK_hᵀ [kv_lora, nope]`) and `attn_v_b`
///   (ggml `[kv_lora, v_head, heads]`: head h is `W_UV_h [v_head, kv_lora]`). These are exactly
///   the per-head matrices `LatentAttentionLayer` computes with (it attends in the latent space
///   with the up-projection absorbed, as llama.cpp does), so they are read as such: the layer asks
///   for `k_b_proj`/`v_b_proj` as `[heads·rows, cols]`, a 3-D tensor's heads stacked as rows.
///   `llama-quantize` quantises them like any other matrix (the Q8_0/Q4_0 fixtures hold Q8_0/Q4_0
///   attn_k_b, attn_v_b and attn_kv_a_mqa). Files converted before the split carry `attn_kv_b`
///   (kv_b_proj as it is) instead.
/// - `attention.key_length`/`value_length` are those of the MQA over the latent (kv_lora + rope,
///   kv_lora); the per-head query/key and value widths are `attention.key_length_mla` and
///   `value_length_mla` (absent in files converted before the split, whose `key_length` is then
///   nope + rope and `value_length` v_head).
/// - Routing: `expert_gating_func` 2 (sigmoid) → DeepSeek-V3's router with `exp_probs_b` as the
///   correction bias; 1 or absent (llama.cpp's default for deepseek2) → DeepSeek-V2's softmax.
///   `expert_group_count`/`expert_group_used_count` → group-limited choice, groups scored by the
///   sum of their two best experts (llama.cpp does so for every gating function);
///   `expert_weights_norm` → renormalised top-k; `expert_weights_scale` → routed scaling factor;
///   `leading_dense_block_count` → the first dense layers.
/// - YaRN: `rope.scaling.{type,factor,original_context_length,yarn_beta_fast,yarn_beta_slow}`,
///   `rope.scaling.yarn_log_multiplier` = 0.1 · mscale_all_dim.
extension GGUFConfigReader {
    func readDeepseek2() throws -> ModelConfig {
        let arch = "deepseek2"
        func key(_ name: String) -> String { "\(arch).\(name)" }
        func optional(_ name: String) -> Int? { values[key(name)]?.intValue }
        func dims(_ name: String) -> [Int]? { tensors[name]?.dims }
        let layers = try int(key("block_count"))
        let hidden = try int(key("embedding_length"))
        let heads = try int(key("attention.head_count"))
        guard layers > 0, layers <= 4096, hidden > 0, heads > 0 else {
            throw error("inconsistent hyper-parameters: \(layers) layers, hidden \(hidden), \(heads) heads")
        }
        guard let embedding = tensors["token_embd.weight"], embedding.dims.count == 2, embedding.dims[0] == hidden else {
            throw error("token_embd.weight is missing or not [\(hidden), vocab]")
        }

        // Multi-head latent attention.
        let latentRank = try int(key("attention.kv_lora_rank"))
        let ropeDim = try int(key("rope.dimension_count"))
        let split = tensors["blk.0.attn_k_b.weight"] != nil
        let queryKeyWidth: Int, valueWidth: Int
        if let mla = optional("attention.key_length_mla") {
            queryKeyWidth = mla
            valueWidth = try int(key("attention.value_length_mla"))
        } else {
            // Converted before kv_b_proj was split: key_length is then the per-head width.
            guard !split else { throw error("attn_k_b without attention.key_length_mla") }
            queryKeyWidth = try int(key("attention.key_length"))
            valueWidth = try int(key("attention.value_length"))
        }
        guard split || tensors["blk.0.attn_kv_b.weight"] != nil else {
            throw error("neither blk.0.attn_k_b/attn_v_b nor blk.0.attn_kv_b: not multi-head latent attention")
        }
        let queryRank = tensors["blk.0.attn_q_a.weight"] != nil ? try int(key("attention.q_lora_rank")) : nil
        let latent = LatentAttentionConfig(queryRank: queryRank, latentRank: latentRank, noPositionDim: queryKeyWidth - ropeDim,
                                           ropeDim: ropeDim, valueDim: valueWidth, interleavedRope: true)
        guard latentRank > 0, ropeDim > 0, ropeDim % 2 == 0, latent.noPositionDim >= 0, valueWidth > 0, (queryRank ?? 1) > 0 else {
            throw error("inconsistent multi-head latent attention: kv_lora_rank \(latentRank), rope dims \(ropeDim), key width \(queryKeyWidth), value width \(valueWidth)")
        }

        // Experts, dense layers, shared experts.
        let expertCount = optional("expert_count") ?? 0
        guard expertCount > 0 else { throw error("'deepseek2' without experts (expert_count) is a dense model; MoEServe runs MoE models") }
        let denseLead = optional("leading_dense_block_count") ?? 0
        var expertWidth: Int?
        for layer in 0..<layers {
            let gate = dims("blk.\(layer).ffn_gate_exps.weight")
            if layer < denseLead {
                guard gate == nil, dims("blk.\(layer).ffn_gate.weight") != nil else {
                    throw error("layer \(layer) is one of the leading_dense_block_count (\(denseLead)) dense layers but has no blk.\(layer).ffn_gate.weight")
                }
                continue
            }
            guard let gate, gate.count == 3, gate[0] == hidden, gate[2] == expertCount, expertWidth == nil || expertWidth == gate[1] else {
                throw error("blk.\(layer).ffn_gate_exps.weight is missing or not [\(hidden), width, \(expertCount)]")
            }
            expertWidth = gate[1]
        }
        guard let expertWidth else { throw error("no blk.N.ffn_gate_exps.weight tensors: no routed experts") }
        let denseWidth = denseLead > 0 ? dims("blk.0.ffn_gate.weight")?.last ?? expertWidth : optional("feed_forward_length") ?? expertWidth
        let sharedWidth = dims("blk.\(denseLead).ffn_gate_shexp.weight")?.last ?? 0

        // Routing as llama.cpp's build_moe_ffn does it.
        var gating = optional("expert_gating_func") ?? 0
        if gating == 0 {
            // llama.cpp's default for deepseek2: softmax, but sigmoid for GLM-4.7-Flash's shape.
            gating = (layers == 47 || layers == 48) && embedding.dims[1] == 154_880 ? 2 : 1
        }
        let normalize = values[key("expert_weights_norm")]?.boolValue ?? false
        let hasBias = tensors["blk.\(denseLead).exp_probs_b.bias"] != nil
        let architecture: Architecture
        switch gating {
        case 2: architecture = .deepseekV3
        case 1:
            guard !normalize, !hasBias else {
                throw error("softmax gating with \(normalize ? "expert_weights_norm" : "exp_probs_b") is not supported (DeepSeek-V2's router)")
            }
            architecture = .deepseekV2
        default: throw error("unsupported expert_gating_func \(gating) (supported: 1 softmax, 2 sigmoid)")
        }
        var groups: RouterSpec.GroupLimit?
        if let count = optional("expert_group_count"), count > 1 {
            let used = optional("expert_group_used_count") ?? count
            guard expertCount % count == 0, expertCount / count >= 2, used >= 1, used <= count else {
                throw error("expert_group_count (\(count)) must divide expert_count (\(expertCount)) into groups of at least 2, and expert_group_used_count (\(used)) be between 1 and it")
            }
            groups = RouterSpec.GroupLimit(groupCount: count, selectedGroups: used, groupScore: .topTwoSum)
        }
        let scale = values[key("expert_weights_scale")]?.doubleValue ?? 0

        // As for safetensors DeepSeek: head_dim is the rotary part (what the RoPE tables are built for).
        var config = modelConfig(
            arch: arch, architecture: architecture, vocabSize: embedding.dims[1], layers: layers, hidden: hidden, heads: heads,
            kvHeads: heads, headDim: ropeDim, expertCount: expertCount, expertsPerToken: try int(key("expert_used_count")),
            expertWidth: expertWidth, denseWidth: denseWidth, sharedWidth: sharedWidth, normTopKProb: normalize)
        config.latentAttention = latent
        config.firstDenseLayers = denseLead
        config.moeLayerFrequency = 1
        config.routerGroups = groups
        // llama.cpp scales the weights only when expert_weights_scale is set (and non-zero).
        config.routedScalingFactor = scale == 0 ? 1 : Float(scale)
        config.rope = try deepseek2Rope(key)
        guard config.expertsPerToken >= 1, config.expertsPerToken <= expertCount else {
            throw error("expert_used_count (\(config.expertsPerToken)) must be between 1 and expert_count (\(expertCount))")
        }
        return config
    }

    /// Plain RoPE, or YaRN from `rope.scaling.*` (`yarn_log_multiplier` = 0.1 · mscale_all_dim;
    /// DeepSeek's configs have mscale = mscale_all_dim, taken so here: cos/sin unscaled, the
    /// softmax scale times mscale²).
    private func deepseek2Rope(_ key: (String) -> String) throws -> RopeParameters {
        guard let type = values[key("rope.scaling.type")]?.stringValue, type != "none" else { return RopeParameters() }
        guard type == "yarn" else { throw error("unsupported rope scaling '\(type)' for deepseek2 (none, yarn)") }
        guard let factor = values[key("rope.scaling.factor")]?.doubleValue,
              let original = values[key("rope.scaling.original_context_length")]?.intValue, original > 0 else {
            throw error("YaRN without rope.scaling.factor or rope.scaling.original_context_length")
        }
        let all = (values[key("rope.scaling.yarn_log_multiplier")]?.doubleValue).map { $0 / 0.1 }
        let fast = values[key("rope.scaling.yarn_beta_fast")]?.doubleValue ?? 32
        let slow = values[key("rope.scaling.yarn_beta_slow")]?.doubleValue ?? 1
        return RopeParameters(kind: .yarn, yarn: .init(factor: factor, originalMaxPositionEmbeddings: original,
                                                       betaFast: fast == 0 ? 32 : fast, betaSlow: slow == 0 ? 1 : slow,
                                                       mscale: all, mscaleAllDim: all))
    }
}

extension GGUFNames {
    /// The names of multi-head latent attention (DeepSeek, llama.cpp's `deepseek2`) and of
    /// DeepSeek-V3's correction bias. `k_b_proj`/`v_b_proj` are not Hugging Face names: they are
    /// llama.cpp's per-head halves of `kv_b_proj` (see `GGUFConfigReader.readDeepseek2`).
    static func latentAttentionMap(config: ModelConfig) -> [String: GGUFTensorReference] {
        var map: [String: GGUFTensorReference] = [:]
        let description = config.architecture.definition
        for layer in 0..<config.layerCount {
            let hf = "model.layers.\(layer).self_attn", blk = "blk.\(layer)"
            for (ours, theirs) in [("q_a_proj", "attn_q_a"), ("q_b_proj", "attn_q_b"), ("kv_a_proj_with_mqa", "attn_kv_a_mqa"),
                                   ("kv_b_proj", "attn_kv_b"), ("k_b_proj", "attn_k_b"), ("v_b_proj", "attn_v_b")] {
                map["\(hf).\(ours).weight"] = .init(name: "\(blk).\(theirs).weight")
                map["\(hf).\(ours).bias"] = .init(name: "\(blk).\(theirs).bias")
            }
            map["\(hf).q_a_layernorm.weight"] = .init(name: "\(blk).attn_q_a_norm.weight")
            map["\(hf).kv_a_layernorm.weight"] = .init(name: "\(blk).attn_kv_a_norm.weight")
            if config.isMoELayer(layer), let bias = description.correctionBiasName(layer) {
                map[bias] = .init(name: "\(blk).exp_probs_b.bias")
            }
        }
        return map
    }
}
