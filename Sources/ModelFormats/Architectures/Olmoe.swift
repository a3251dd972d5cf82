/// OLMoE (`OlmoeForCausalLM`): attention with an RMSNorm over the whole q and k projections
/// (before splitting into heads), biases only with `attention_bias`, and, when `clip_qkv` is
/// set, q, k and v clamped to ±clip_qkv; every layer is MoE with `num_experts` SwiGLU experts
/// of width `intermediate_size` (`mlp.experts.E.{gate,up,down}_proj`); routing softmax →
/// top `num_experts_per_tok` → renormalised only with `norm_topk_prob` (off by default).
/// No shared expert.
enum Olmoe {
    static let description = ArchitectureDescription(
        className: "OlmoeForCausalLM",
        modelType: "olmoe",
        readConfig: { reader, config in
            config.expertCount = try reader.expertCountValue()
            config.expertIntermediateSize = try reader.int("intermediate_size")
            config.denseIntermediateSize = config.expertIntermediateSize
            config.normTopKProb = reader.bool("norm_topk_prob", default: false)
            config.attentionBias = reader.bool("attention_bias", default: false)
            config.clipQKV = reader.double("clip_qkv").map { Float($0) }
        },
        isMoELayer: { _, _ in true },
        expertWidthKey: "intermediate_size",
        router: { RouterSpec(scoring: .softmax, topK: $0.expertsPerToken, renormalize: $0.normTopKProb) },
        attention: { AttentionSpec(qkNormalization: .wholeProjection, requiresBias: $0.attentionBias, clipQKV: $0.clipQKV) },
        activation: .silu,
        sharedExpert: { _, _ in nil },
        feedForwardPrefix: { "model.layers.\($0).mlp" },
        routerName: { "model.layers.\($0).mlp.gate.weight" },
        expertTensorNames: projectionStyleExpertNames
    )
}

extension Architecture {
    public static let olmoe = Architecture(Olmoe.description)
}
