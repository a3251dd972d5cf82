/// Qwen3-MoE (`Qwen3MoeForCausalLM`): attention with biases only with `attention_bias` and a
/// per-head RMSNorm on q and k (over `head_dim`, which need not be hidden/heads) before RoPE;
/// experts, MoE placement and routing as Qwen2-MoE (`readQwenMoEConfig`), without a shared
/// expert.
enum Qwen3Moe {
    static let description = ArchitectureDescription(
        className: "Qwen3MoeForCausalLM",
        modelType: "qwen3_moe",
        readConfig: { reader, config in
            try readQwenMoEConfig(reader, &config)
            config.attentionBias = reader.bool("attention_bias", default: false)
        },
        isMoELayer: qwenIsMoELayer,
        expertWidthKey: "moe_intermediate_size",
        router: { RouterSpec(scoring: .softmax, topK: $0.expertsPerToken, renormalize: $0.normTopKProb) },
        attention: { AttentionSpec(qkNormalization: .perHead, requiresBias: $0.attentionBias) },
        activation: .silu,
        sharedExpert: { _, _ in nil },
        feedForwardPrefix: { "model.layers.\($0).mlp" },
        routerName: { "model.layers.\($0).mlp.gate.weight" },
        expertTensorNames: projectionStyleExpertNames
    )
}

extension Architecture {
    public static let qwen3Moe = Architecture(Qwen3Moe.description)
}
