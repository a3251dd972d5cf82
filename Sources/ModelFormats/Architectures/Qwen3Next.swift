/// Qwen3-Next (`Qwen3NextForCausalLM`): a hybrid of gated delta-net linear attention and gated
/// full attention. `layer_types` (or, in the published configs, every `full_attention_interval`-th
/// layer, default 4) says which layers use full attention; the others are gated delta-nets
/// (`linear_attn.*`: `in_proj_qkvz`, `in_proj_ba`, a causal depthwise `conv1d` over q/k/v,
/// `A_log`, `dt_bias`, a gated RMSNorm `norm` and `out_proj`) whose shapes are the `linear_*`
/// keys. Full attention: per-head q/k RMSNorm, `q_proj` twice as wide (query and a sigmoid output
/// gate per head), RoPE on the first `partial_rotary_factor` (default 0.25) of each head, biases
/// only with `attention_bias`, `head_dim` 256 unless given. Every RMSNorm of the decoder scales by
/// `1 + weight` (the gated norm by its weight). MoE placement and experts as Qwen3-MoE, routing
/// softmax → top `num_experts_per_tok` → renormalised unless `norm_topk_prob` is false (default
/// true), plus a shared expert of width `shared_expert_intermediate_size` scaled by
/// `sigmoid(shared_expert_gate · x)` as Qwen2-MoE's. Defaults are transformers' `Qwen3NextConfig`.
/// The published checkpoints' multi-token-prediction head (`mtp.*`, which transformers ignores
/// too) is left out of packed stores.
enum Qwen3Next {
    static let description = ArchitectureDescription(
        className: "Qwen3NextForCausalLM",
        modelType: "qwen3_next",
        readConfig: { reader, config in
            try readQwenMoEConfig(reader, &config)
            config.normTopKProb = reader.bool("norm_topk_prob", default: true)
            config.sharedExpertIntermediateSize = reader.optionalInt("shared_expert_intermediate_size") ?? 512
            config.attentionBias = reader.bool("attention_bias", default: false)
            config.headDim = reader.optionalInt("head_dim") ?? 256
            config.linearAttention = try readLinearAttention(reader, layerCount: config.layerCount)
            // The shared reader has checked a given factor; Qwen3-Next's default is 0.25.
            let factor = reader.partialRotaryFactor() ?? 0.25
            config.rope.partialRotaryFactor = factor
            let rotaryDim = Int(Double(config.headDim) * factor)
            guard rotaryDim >= 2, rotaryDim % 2 == 0 else {
                throw reader.error("head_dim \(config.headDim) × partial_rotary_factor \(factor) = \(rotaryDim) rotary dimensions; RoPE needs an even number")
            }
        },
        isMoELayer: qwenIsMoELayer,
        expertWidthKey: "moe_intermediate_size",
        router: { RouterSpec(scoring: .softmax, topK: $0.expertsPerToken, renormalize: $0.normTopKProb) },
        attention: { AttentionSpec(qkNormalization: .perHead, requiresBias: $0.attentionBias, outputGate: true) },
        activation: .silu,
        sharedExpert: { config, layer in
            SharedExpertSpec(prefix: "model.layers.\(layer).mlp.shared_expert", width: config.sharedExpertIntermediateSize,
                             sigmoidGateName: "model.layers.\(layer).mlp.shared_expert_gate.weight")
        },
        feedForwardPrefix: { "model.layers.\($0).mlp" },
        routerName: { "model.layers.\($0).mlp.gate.weight" },
        expertTensorNames: projectionStyleExpertNames,
        normWeightOffset: 1,
        unusedTensorPrefixes: ["mtp."]
    )

    /// The linear-attention layers and shapes: `layer_types`, else every layer but each
    /// `full_attention_interval`-th (transformers' rule when `layer_types` is absent).
    static func readLinearAttention(_ reader: ConfigReader, layerCount: Int) throws -> LinearAttentionConfig {
        let linear: [Int]
        if let types = reader.json["layer_types"]?.arrayValue {
            let names = types.map { $0.stringValue ?? "" }
            guard names.count == layerCount else {
                throw reader.error("layer_types has \(names.count) entries for \(layerCount) layers")
            }
            if let bad = names.first(where: { $0 != "linear_attention" && $0 != "full_attention" }) {
                throw reader.error("unsupported layer type '\(bad)' in layer_types (expected linear_attention or full_attention)")
            }
            linear = names.indices.filter { names[$0] == "linear_attention" }
        } else {
            let interval = reader.optionalInt("full_attention_interval") ?? 4
            guard interval >= 1 else { throw reader.error("full_attention_interval \(interval) must be at least 1") }
            linear = (0..<layerCount).filter { ($0 + 1) % interval != 0 }
        }
        let shapes = LinearAttentionConfig(
            layers: linear,
            keyHeadCount: reader.optionalInt("linear_num_key_heads") ?? 16,
            valueHeadCount: reader.optionalInt("linear_num_value_heads") ?? 32,
            keyHeadDim: reader.optionalInt("linear_key_head_dim") ?? 128,
            valueHeadDim: reader.optionalInt("linear_value_head_dim") ?? 128,
            convKernel: reader.optionalInt("linear_conv_kernel_dim") ?? 4)
        guard shapes.keyHeadCount > 0, shapes.valueHeadCount % shapes.keyHeadCount == 0, shapes.valueHeadCount > 0 else {
            throw reader.error("linear_num_value_heads (\(shapes.valueHeadCount)) must be a positive multiple of linear_num_key_heads (\(shapes.keyHeadCount))")
        }
        guard shapes.keyHeadDim > 0, shapes.valueHeadDim > 0, shapes.convKernel >= 1 else {
            throw reader.error("linear attention head dims and linear_conv_kernel_dim must be positive")
        }
        return shapes
    }
}

extension ArchitectureDescription {
    /// Tensors of layer `l`'s gated delta-net: `model.layers.l.linear_attn.<name>`.
    public func linearAttentionPrefix(_ layer: Int) -> String { "model.layers.\(layer).linear_attn" }
}

extension Architecture {
    public static let qwen3Next = Architecture(Qwen3Next.description)
}
