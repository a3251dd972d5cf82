/// DeepSeek-V3 / R1 / V3.1 and Kimi-K2 (`DeepseekV3ForCausalLM`): multi-head latent attention
/// (`LatentAttentionConfig`, RoPE interleaved unless `rope_interleave` is false, YaRN's mscale²
/// on the softmax scale); the first `first_k_dense_replace` layers dense (width
/// `intermediate_size`), the rest MoE with `n_routed_experts` experts of width
/// `moe_intermediate_size` plus `n_shared_experts` shared ones fused into one MLP
/// (`mlp.shared_experts`, added with weight 1). Routing: sigmoid scores; for choosing only, plus
/// `gate.e_score_correction_bias`, limited to the `topk_group` of `n_group` groups with the best
/// sum of their two best experts; weights the chosen sigmoid scores, renormalised with
/// `norm_topk_prob`, times `routed_scaling_factor`.
enum DeepseekV3 {
    static let description = ArchitectureDescription(
        className: "DeepseekV3ForCausalLM",
        modelType: "deepseek_v3",
        readConfig: { reader, config in
            try readDeepseekConfig(reader, &config, defaultSharedExperts: 1, defaultDenseLayers: 3,
                                   defaultScaling: 2.5, interleavedRope: reader.bool("rope_interleave", default: true))
            config.normTopKProb = reader.bool("norm_topk_prob", default: true)
            let groups = reader.json.keys.contains("n_group") ? reader.optionalInt("n_group") : 8
            let selected = reader.json.keys.contains("topk_group") ? reader.optionalInt("topk_group") : 4
            if let groups, let selected { config.routerGroups = try topTwoSumGroups(groups: groups, selected: selected, reader, config) }
        },
        isMoELayer: deepseekIsMoELayer,
        expertWidthKey: "moe_intermediate_size",
        router: { config in
            RouterSpec(scoring: .sigmoid, topK: config.expertsPerToken, renormalize: config.normTopKProb,
                       groups: config.routerGroups, scalingFactor: config.routedScalingFactor)
        },
        attention: { _ in AttentionSpec(qkNormalization: .none, requiresBias: false) },
        activation: .silu,
        sharedExpert: deepseekSharedExpert,
        feedForwardPrefix: { "model.layers.\($0).mlp" },
        routerName: { "model.layers.\($0).mlp.gate.weight" },
        expertTensorNames: projectionStyleExpertNames,
        correctionBiasName: { "model.layers.\($0).mlp.gate.e_score_correction_bias" }
    )
}

/// DeepSeek-V3's group-limited routing (also GLM-4.5's): `n_group` groups scored by the sum of
/// their two best experts, the best `topk_group` kept; nil for a single group.
func topTwoSumGroups(groups: Int, selected: Int, _ reader: ConfigReader, _ config: ModelConfig) throws -> RouterSpec.GroupLimit? {
    guard groups > 1 else { return nil }
    guard config.expertCount % groups == 0, config.expertCount / groups >= 2, selected >= 1, selected <= groups else {
        throw reader.error("n_group (\(groups)) must divide n_routed_experts (\(config.expertCount)) into groups of at least 2, and topk_group (\(selected)) be between 1 and n_group")
    }
    return RouterSpec.GroupLimit(groupCount: groups, selectedGroups: selected, groupScore: .topTwoSum)
}

/// The keys DeepSeek-V2 and V3 share: experts, shared experts, dense layers, scaling and MLA.
func readDeepseekConfig(_ reader: ConfigReader, _ config: inout ModelConfig, defaultSharedExperts: Int, defaultDenseLayers: Int,
                        defaultScaling: Double, interleavedRope: Bool) throws {
    func value(_ key: String, _ fallback: Int) -> Int { reader.optionalInt(key) ?? fallback }
    config.expertCount = try reader.optionalInt("n_routed_experts") ?? reader.expertCountValue()
    config.expertIntermediateSize = try reader.int("moe_intermediate_size")
    config.denseIntermediateSize = try reader.int("intermediate_size")
    config.sharedExpertIntermediateSize = config.expertIntermediateSize * value("n_shared_experts", defaultSharedExperts)
    config.firstDenseLayers = value("first_k_dense_replace", defaultDenseLayers)
    config.moeLayerFrequency = max(1, value("moe_layer_freq", 1))
    config.routedScalingFactor = Float(reader.double("routed_scaling_factor") ?? defaultScaling)
    config.attentionBias = reader.bool("attention_bias", default: false)
    // q_lora_rank: null means a direct q_proj (V2-Lite); absent means transformers' default.
    let queryRank = reader.json.keys.contains("q_lora_rank") ? reader.optionalInt("q_lora_rank") : 1536
    let latent = LatentAttentionConfig(
        queryRank: queryRank, latentRank: value("kv_lora_rank", 512), noPositionDim: value("qk_nope_head_dim", 128),
        ropeDim: value("qk_rope_head_dim", 64), valueDim: value("v_head_dim", 128), interleavedRope: interleavedRope)
    guard latent.latentRank > 0, latent.ropeDim > 0, latent.ropeDim % 2 == 0, latent.valueDim > 0, latent.noPositionDim >= 0,
          (latent.queryRank ?? 1) > 0 else {
        throw reader.error("multi-head latent attention needs positive kv_lora_rank, v_head_dim, q_lora_rank (or null) and an even qk_rope_head_dim")
    }
    config.latentAttention = latent
    // transformers: head_dim is the rotary part (what the RoPE tables are built for).
    config.headDim = latent.ropeDim
}

/// DeepSeek placement: layers from `first_k_dense_replace` on, every `moe_layer_freq`-th.
@Sendable func deepseekIsMoELayer(_ config: ModelConfig, _ index: Int) -> Bool {
    config.expertCount > 0 && index >= config.firstDenseLayers && index % config.moeLayerFrequency == 0
}

/// DeepSeek's and GLM-4.5's shared experts: one MLP of `n_shared_experts · moe_intermediate_size`.
@Sendable func deepseekSharedExpert(_ config: ModelConfig, _ layer: Int) -> SharedExpertSpec? {
    config.sharedExpertIntermediateSize > 0
        ? SharedExpertSpec(ungatedPrefix: "model.layers.\(layer).mlp.shared_experts", width: config.sharedExpertIntermediateSize)
        : nil
}

extension Architecture {
    public static let deepseekV3 = Architecture(DeepseekV3.description)
}
