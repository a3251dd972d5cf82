/// Mixtral (`MixtralForCausalLM`): Llama attention with grouped-query heads and no biases
/// unless `attention_bias`, an optional `sliding_window`, and in every layer a
/// `block_sparse_moe` block of `num_local_experts` SwiGLU experts of width
/// `intermediate_size`, named `w1` (gate), `w3` (up) and `w2` (down). Routing: softmax over
/// all experts, top `num_experts_per_tok`, always renormalised. No shared expert.
enum Mixtral {
    static let description = ArchitectureDescription(
        className: "MixtralForCausalLM",
        modelType: "mixtral",
        readConfig: { reader, config in
            config.expertCount = try reader.int("num_local_experts")
            config.expertIntermediateSize = try reader.int("intermediate_size")
            config.denseIntermediateSize = config.expertIntermediateSize
            config.normTopKProb = true
            config.attentionBias = reader.bool("attention_bias", default: false)
            config.slidingWindow = reader.optionalInt("sliding_window")
        },
        isMoELayer: { _, _ in true },
        expertWidthKey: "intermediate_size",
        router: { RouterSpec(scoring: .softmax, topK: $0.expertsPerToken, renormalize: true) },
        attention: { AttentionSpec(qkNormalization: .none, requiresBias: $0.attentionBias, slidingWindow: $0.slidingWindow) },
        activation: .silu,
        sharedExpert: { _, _ in nil },
        feedForwardPrefix: { "model.layers.\($0).block_sparse_moe" },
        routerName: { "model.layers.\($0).block_sparse_moe.gate.weight" },
        expertTensorNames: { layer, expert in
            let prefix = "model.layers.\(layer).block_sparse_moe.experts.\(expert)"
            return ExpertTensorNames(gate: "\(prefix).w1.weight", up: "\(prefix).w3.weight", down: "\(prefix).w2.weight")
        }
    )
}

extension Architecture {
    public static let mixtral = Architecture(Mixtral.description)
}
