/// MiniMax-M2 (`MiniMaxM2ForCausalLM`): grouped-query attention without biases, an RMSNorm over
/// the whole q and k projections (before splitting into heads), and RoPE over the first
/// `rotary_dim` of each head (`partial_rotary_factor = rotary_dim / head_dim`); every layer a
/// `block_sparse_moe` of `num_local_experts` experts of width `intermediate_size`, named `w1`
/// (gate), `w3` (up), `w2` (down). Routing: sigmoid scores, plus
/// `block_sparse_moe.e_score_correction_bias` for choosing only, top `num_experts_per_tok`,
/// always renormalised. No shared expert.
enum MiniMaxM2 {
    static let description = ArchitectureDescription(
        className: "MiniMaxM2ForCausalLM",
        modelType: "minimax_m2",
        readConfig: { reader, config in
            config.expertCount = try reader.expertCountValue()
            config.expertIntermediateSize = try reader.int("intermediate_size")
            config.denseIntermediateSize = config.expertIntermediateSize
            config.normTopKProb = true
            // Released checkpoints give the rotary part as `rotary_dim`.
            if reader.partialRotaryFactor() == nil, let rotary = reader.optionalInt("rotary_dim") {
                guard rotary > 0, rotary <= config.headDim else {
                    throw reader.error("rotary_dim (\(rotary)) must be between 1 and head_dim (\(config.headDim))")
                }
                config.rope.partialRotaryFactor = Double(rotary) / Double(config.headDim)
            }
        },
        isMoELayer: { _, _ in true },
        expertWidthKey: "intermediate_size",
        router: { RouterSpec(scoring: .sigmoid, topK: $0.expertsPerToken, renormalize: true) },
        attention: { _ in AttentionSpec(qkNormalization: .wholeProjection, requiresBias: false) },
        activation: .silu,
        sharedExpert: { _, _ in nil },
        feedForwardPrefix: { "model.layers.\($0).block_sparse_moe" },
        routerName: { "model.layers.\($0).block_sparse_moe.gate.weight" },
        expertTensorNames: { layer, expert in
            let prefix = "model.layers.\(layer).block_sparse_moe.experts.\(expert)"
            return ExpertTensorNames(gate: "\(prefix).w1.weight", up: "\(prefix).w3.weight", down: "\(prefix).w2.weight")
        },
        correctionBiasName: { "model.layers.\($0).block_sparse_moe.e_score_correction_bias" }
    )
}

extension Architecture {
    public static let miniMaxM2 = Architecture(MiniMaxM2.description)
}
