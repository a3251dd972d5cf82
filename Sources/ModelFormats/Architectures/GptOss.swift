/// gpt-oss (`GptOssForCausalLM`): grouped-query attention with q/k/v/o biases
/// (`attention_bias`, on by default) and a learned sink logit per head (`self_attn.sinks`);
/// `layer_types` choose per layer between a sliding window of `sliding_window` positions and
/// full attention (absent: sliding on even layers, full on odd, as transformers defaults).
/// Every layer is MoE: a router with a bias (`mlp.router.weight`, `mlp.router.bias`) picks the
/// top `num_experts_per_tok` of `num_local_experts` by logit and mixes them by a softmax over
/// the chosen logits, which equals the full softmax renormalised over the chosen (the rule
/// Mixtral uses, so the predictor guesses with it unchanged). The experts are stored fused
/// (`FusedExpertNames`: `gate_up_proj` with interleaved gate/up columns, `down_proj`, each
/// with a bias; bf16 or MXFP4) and apply the clamped SwiGLU (`swiglu_alpha` 1.702,
/// `swiglu_limit` 7.0). No shared expert, no dense layers.
enum GptOss {
    static let description: ArchitectureDescription = {
        var description = ArchitectureDescription(
            className: "GptOssForCausalLM",
            modelType: "gpt_oss",
            readConfig: { reader, config in
                config.expertCount = try reader.expertCountValue()
                config.expertIntermediateSize = try reader.int("intermediate_size")
                config.denseIntermediateSize = config.expertIntermediateSize
                config.normTopKProb = true
                config.attentionBias = reader.bool("attention_bias", default: true)
                // transformers' GptOssConfig defaults, which the hub configs rely on.
                config.rmsNormEps = Float(reader.double("rms_norm_eps") ?? 1e-5)
                config.slidingWindow = reader.json["sliding_window"].map { $0.intValue } ?? 128
                config.swigluAlpha = Float(reader.double("swiglu_alpha") ?? 1.702)
                config.swigluLimit = Float(reader.double("swiglu_limit") ?? 7.0)
                let types = reader.json["layer_types"]?.arrayValue?.compactMap(\.stringValue)
                    ?? (0..<config.layerCount).map { $0 % 2 == 0 ? "sliding_attention" : "full_attention" }
                guard types.count == config.layerCount else {
                    throw reader.error("layer_types has \(types.count) entries for \(config.layerCount) layers")
                }
                if let unknown = types.first(where: { $0 != "sliding_attention" && $0 != "full_attention" }) {
                    throw reader.error("unsupported layer type '\(unknown)' in layer_types (gpt-oss has sliding_attention and full_attention)")
                }
                if types.contains("sliding_attention") {
                    guard let window = config.slidingWindow, window >= 1 else {
                        throw reader.error("layer_types has sliding_attention layers but sliding_window is not a positive integer")
                    }
                }
                config.layerTypes = types
                // transformers' GptOssConfig: no rope_scaling (nor rope_parameters) means YaRN
                // with factor 32 over 4096 positions, not the plain RoPE.
                if reader.json["rope_parameters"]?.objectValue == nil && reader.json["rope_scaling"]?.objectValue == nil {
                    config.rope = RopeParameters(kind: .yarn, yarn: .init(factor: 32, originalMaxPositionEmbeddings: 4096,
                                                                           betaFast: 32, betaSlow: 1, truncate: false))
                }
            },
            isMoELayer: { _, _ in true },
            expertWidthKey: "intermediate_size",
            router: { RouterSpec(scoring: .softmax, topK: $0.expertsPerToken, renormalize: true) },
            attention: { config in
                AttentionSpec(qkNormalization: .none, requiresBias: config.attentionBias, slidingWindow: config.slidingWindow,
                              sinks: true, slidingLayers: config.layerTypes?.map { $0 == "sliding_attention" })
            },
            activation: .clampedSwiGLU(alpha: 1.702, limit: 7.0),
            sharedExpert: { _, _ in nil },
            feedForwardPrefix: { "model.layers.\($0).mlp" },
            routerName: { "model.layers.\($0).mlp.router.weight" },
            expertTensorNames: { layer, _ in
                // Fused: every expert of a layer lives in the same two tensors (see `fusedExperts`).
                let prefix = "model.layers.\(layer).mlp.experts"
                return ExpertTensorNames(gate: "\(prefix).gate_up_proj", up: "\(prefix).gate_up_proj", down: "\(prefix).down_proj")
            })
        description.configuredActivation = { config in
            .clampedSwiGLU(alpha: config.swigluAlpha ?? 1.702, limit: config.swigluLimit ?? 7.0)
        }
        description.routerBiasName = { "model.layers.\($0).mlp.router.bias" }
        description.fusedExperts = { layer in
            let prefix = "model.layers.\(layer).mlp.experts"
            return FusedExpertNames(gateUp: "\(prefix).gate_up_proj", gateUpBias: "\(prefix).gate_up_proj_bias",
                                    down: "\(prefix).down_proj", downBias: "\(prefix).down_proj_bias")
        }
        return description
    }()
}

extension Architecture {
    public static let gptOss = Architecture(GptOss.description)
}
