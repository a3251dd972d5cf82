/// GLM-4.5 / 4.6 / 4.5-Air (`Glm4MoeForCausalLM`): grouped-query attention with q/k/v biases
/// when `attention_bias`, a per-head q/k RMSNorm when `use_qk_norm`, and RoPE over the first
/// `partial_rotary_factor` (default 0.5) of each head; the first `first_k_dense_replace` layers
/// dense (width `intermediate_size`), the rest MoE with `n_routed_experts` experts of width
/// `moe_intermediate_size` plus `n_shared_experts` shared ones (`mlp.shared_experts`, weight 1).
/// Routing as DeepSeek-V3's: sigmoid scores, `gate.e_score_correction_bias` for choosing only,
/// `n_group`/`topk_group` groups by their two best experts, `norm_topk_prob` (default true),
/// times `routed_scaling_factor`.
enum Glm4Moe {
    static let description = ArchitectureDescription(
        className: "Glm4MoeForCausalLM",
        modelType: "glm4_moe",
        readConfig: { reader, config in
            config.expertCount = try reader.optionalInt("n_routed_experts") ?? reader.expertCountValue()
            config.expertIntermediateSize = try reader.int("moe_intermediate_size")
            config.denseIntermediateSize = try reader.int("intermediate_size")
            config.sharedExpertIntermediateSize = config.expertIntermediateSize * (reader.optionalInt("n_shared_experts") ?? 1)
            config.firstDenseLayers = reader.optionalInt("first_k_dense_replace") ?? 1
            config.routedScalingFactor = Float(reader.double("routed_scaling_factor") ?? 1)
            config.normTopKProb = reader.bool("norm_topk_prob", default: true)
            config.attentionBias = reader.bool("attention_bias", default: false)
            config.qkNormPerHead = reader.bool("use_qk_norm", default: false)
            // transformers' Glm4MoeConfig: partial_rotary_factor defaults to 0.5.
            if reader.partialRotaryFactor() == nil { config.rope.partialRotaryFactor = 0.5 }
            let groups = reader.optionalInt("n_group") ?? 1, selected = reader.optionalInt("topk_group") ?? 1
            config.routerGroups = try topTwoSumGroups(groups: groups, selected: selected, reader, config)
        },
        isMoELayer: deepseekIsMoELayer,
        expertWidthKey: "moe_intermediate_size",
        router: { config in
            RouterSpec(scoring: .sigmoid, topK: config.expertsPerToken, renormalize: config.normTopKProb,
                       groups: config.routerGroups, scalingFactor: config.routedScalingFactor)
        },
        attention: { AttentionSpec(qkNormalization: $0.qkNormPerHead ? .perHead : .none, requiresBias: $0.attentionBias) },
        activation: .silu,
        sharedExpert: deepseekSharedExpert,
        feedForwardPrefix: { "model.layers.\($0).mlp" },
        routerName: { "model.layers.\($0).mlp.gate.weight" },
        expertTensorNames: projectionStyleExpertNames,
        correctionBiasName: { "model.layers.\($0).mlp.gate.e_score_correction_bias" }
    )
}

extension Architecture {
    public static let glm4Moe = Architecture(Glm4Moe.description)
}
