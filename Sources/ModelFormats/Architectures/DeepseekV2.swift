/// DeepSeek-V2 / V2-Lite / V2.5 (`DeepseekV2ForCausalLM`): multi-head latent attention as V3's
/// (`readDeepseekConfig`; RoPE always interleaved, transformers' complex product), MoE placement
/// and shared experts as V3's. Routing: softmax scores, top `num_experts_per_tok`
/// (`topk_method` "greedy") or, with "group_limited_greedy", limited to the `topk_group` of
/// `n_group` groups with the best single expert; weights the chosen scores times
/// `routed_scaling_factor`. transformers' V2 router never renormalises (`norm_topk_prob` is
/// read but unused), and neither does this one.
enum DeepseekV2 {
    static let description = ArchitectureDescription(
        className: "DeepseekV2ForCausalLM",
        modelType: "deepseek_v2",
        readConfig: { reader, config in
            try readDeepseekConfig(reader, &config, defaultSharedExperts: 2, defaultDenseLayers: 0,
                                   defaultScaling: 1, interleavedRope: true)
            config.normTopKProb = false
            let method = reader.json["topk_method"]?.stringValue ?? "greedy"
            switch method {
            case "greedy":
                break
            case "group_limited_greedy":
                guard let groups = reader.optionalInt("n_group"), let selected = reader.optionalInt("topk_group"),
                      groups >= 1, config.expertCount % groups == 0, selected >= 1, selected <= groups else {
                    throw reader.error("topk_method 'group_limited_greedy' needs n_group dividing n_routed_experts (\(config.expertCount)) and 1 <= topk_group <= n_group")
                }
                config.routerGroups = RouterSpec.GroupLimit(groupCount: groups, selectedGroups: selected, groupScore: .max)
            default:
                throw reader.error("unsupported topk_method '\(method)' (DeepseekV2ForCausalLM: greedy, group_limited_greedy)")
            }
        },
        isMoELayer: deepseekIsMoELayer,
        expertWidthKey: "moe_intermediate_size",
        router: { config in
            RouterSpec(scoring: .softmax, topK: config.expertsPerToken, renormalize: false,
                       groups: config.routerGroups, scalingFactor: config.routedScalingFactor)
        },
        attention: { _ in AttentionSpec(qkNormalization: .none, requiresBias: false) },
        activation: .silu,
        sharedExpert: deepseekSharedExpert,
        feedForwardPrefix: { "model.layers.\($0).mlp" },
        routerName: { "model.layers.\($0).mlp.gate.weight" },
        expertTensorNames: projectionStyleExpertNames
    )
}

extension Architecture {
    public static let deepseekV2 = Architecture(DeepseekV2.description)
}
