/// Qwen2-MoE (`Qwen2MoeForCausalLM`): attention with q/k/v biases (always); MoE layers every
/// `decoder_sparse_step` layers except `mlp_only_layers` (the rest have a dense SwiGLU MLP of
/// width `intermediate_size`); `num_experts` routed experts of width `moe_intermediate_size`;
/// routing softmax → top `num_experts_per_tok` → renormalised only with `norm_topk_prob`;
/// plus, when `shared_expert_intermediate_size` is set, a shared expert whose output is
/// scaled by `sigmoid(shared_expert_gate · x)`.
enum Qwen2Moe {
    static let description = ArchitectureDescription(
        className: "Qwen2MoeForCausalLM",
        modelType: "qwen2_moe",
        readConfig: { reader, config in
            try readQwenMoEConfig(reader, &config)
            config.sharedExpertIntermediateSize = reader.optionalInt("shared_expert_intermediate_size") ?? 0
            config.attentionBias = true
        },
        isMoELayer: qwenIsMoELayer,
        expertWidthKey: "moe_intermediate_size",
        router: { RouterSpec(scoring: .softmax, topK: $0.expertsPerToken, renormalize: $0.normTopKProb) },
        attention: { _ in AttentionSpec(qkNormalization: .none, requiresBias: true) },
        activation: .silu,
        sharedExpert: { config, layer in
            SharedExpertSpec(prefix: "model.layers.\(layer).mlp.shared_expert", width: config.sharedExpertIntermediateSize,
                             sigmoidGateName: "model.layers.\(layer).mlp.shared_expert_gate.weight")
        },
        feedForwardPrefix: { "model.layers.\($0).mlp" },
        routerName: { "model.layers.\($0).mlp.gate.weight" },
        expertTensorNames: projectionStyleExpertNames
    )
}

/// The keys Qwen2-MoE and Qwen3-MoE share: experts, widths, routing and MoE placement.
func readQwenMoEConfig(_ reader: ConfigReader, _ config: inout ModelConfig) throws {
    config.expertCount = try reader.expertCountValue()
    config.expertIntermediateSize = try reader.int("moe_intermediate_size")
    config.denseIntermediateSize = try reader.int("intermediate_size")
    config.normTopKProb = reader.bool("norm_topk_prob", default: false)
    config.decoderSparseStep = max(1, reader.optionalInt("decoder_sparse_step") ?? 1)
    config.mlpOnlyLayers = reader.json["mlp_only_layers"]?.arrayValue?.compactMap(\.intValue) ?? []
}

/// Qwen2/3-MoE placement: every `decoder_sparse_step`-th layer, minus `mlp_only_layers`.
@Sendable func qwenIsMoELayer(_ config: ModelConfig, _ index: Int) -> Bool {
    !config.mlpOnlyLayers.contains(index) && config.expertCount > 0 && (index + 1) % config.decoderSparseStep == 0
}

extension Architecture {
    public static let qwen2Moe = Architecture(Qwen2Moe.description)
}
