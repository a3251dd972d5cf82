import Foundation

/// The configuration of llama.cpp's `glm4moe` (GLM-4.5/4.6/4.5-Air) and `gpt-oss` GGUF files,
/// read as llama.cpp's loaders read them (`llama_model_glm4_moe`, `llama_model_openai_moe`,
/// `llm_graph_context::build_moe_ffn`), so that MoEServe computes what llama.cpp computes:
///
/// - `glm4moe`: `block_count` includes the `nextn_predict_layers` multi-token-prediction layers
///   appended at the end, which llama.cpp's main graph skips (so does MoEServe); the first
///   `leading_dense_block_count` layers are dense; routing is `expert_gating_func` sigmoid
///   (the default) with `exp_probs_b` for choosing only, renormalised when `expert_weights_norm`
///   (llama.cpp's default: not), times `expert_weights_scale` (0 or absent: 1); no expert
///   groups (llama.cpp's glm4moe ignores `n_group`); RoPE over the first
///   `rope.dimension_count` dimensions of each head (NeoX pairing, as transformers' rotate_half);
///   q/k norms and q/k/v biases when the file has them.
/// - `gpt-oss`: sinks, biases, a sliding window of `attention.sliding_window` on even layers
///   (llama.cpp's pattern of 2: layer 0 sliding, layer 1 full, ...), softmax over the chosen
///   logits, the clamped SwiGLU (alpha 1.702, limit 7, fixed in llama.cpp's graph), YaRN from
///   `rope.scaling.*` with llama.cpp's whole-dimension correction range and beta 32/1.
extension GGUFConfigReader {
    /// llama.cpp architecture → ours, for the architectures this file reads.
    static let glmGptOssArchitectures: [String: Architecture] = ["glm4moe": .glm4Moe, "gpt-oss": .gptOss]

    /// The configuration of a `glm4moe` or `gpt-oss` file.
    func readGlmGptOss(arch: String, architecture: Architecture) throws -> ModelConfig {
        func key(_ name: String) -> String { "\(arch).\(name)" }
        let shape = try attentionShape(arch: arch, appendedNextN: true)
        let (layers, hidden, heads, kvHeads, headDim) = (shape.layers, shape.hidden, shape.heads, shape.kvHeads, shape.headDim)
        let rotary = values[key("rope.dimension_count")]?.intValue ?? headDim
        guard rotary > 0, rotary <= headDim, rotary % 2 == 0 else {
            throw error("rope.dimension_count \(rotary) must be even and at most the head size \(headDim)")
        }
        var rope = RopeParameters(partialRotaryFactor: Double(rotary) / Double(headDim))
        switch values[key("rope.scaling.type")]?.stringValue ?? "none" {
        case "none": break
        case "yarn":
            guard let factor = values[key("rope.scaling.factor")]?.doubleValue, factor > 0,
                  let original = values[key("rope.scaling.original_context_length")]?.intValue, original > 0 else {
                throw error("yarn rope scaling needs rope.scaling.factor and rope.scaling.original_context_length")
            }
            // llama.cpp: correction range floored/ceiled to whole dimensions, beta 32/1 (its
            // defaults; these architectures read no yarn_beta keys), and cos/sin scaled by
            // 1 + 0.1·ln(factor) times `rope.scaling.attn_factor`.
            let attention = RopeParameters.yarnMscale(factor) * (values[key("rope.scaling.attn_factor")]?.doubleValue ?? 1)
            rope.kind = .yarn
            rope.yarn = .init(factor: factor, originalMaxPositionEmbeddings: original, betaFast: 32, betaSlow: 1,
                              truncate: true, attentionFactor: attention)
        case let other:
            throw error("unsupported rope scaling '\(other)' (none and yarn are implemented)")
        }
        guard let embedding = tensors["token_embd.weight"], embedding.dims.count == 2, embedding.dims[0] == hidden else {
            throw error("token_embd.weight is missing or not [\(hidden), vocab]")
        }
        let expertCount = try int(key("expert_count"))
        let used = try int(key("expert_used_count"))
        guard expertCount > 0, used >= 1, used <= expertCount else {
            throw error("expert_used_count (\(used)) must be between 1 and expert_count (\(expertCount))")
        }

        // Dense leading layers, then MoE layers whose stacked experts settle the width.
        let leading = architecture == .glm4Moe ? values[key("leading_dense_block_count")]?.intValue ?? 0 : 0
        guard leading >= 0, leading < layers else { throw error("leading_dense_block_count \(leading) leaves no MoE layer of \(layers)") }
        func dims(_ name: String) -> [Int]? { tensors[name]?.dims }
        var expertWidth: Int?
        for layer in leading..<layers {
            guard let gate = dims("blk.\(layer).ffn_gate_exps.weight"), gate.count == 3, gate[0] == hidden, gate[2] == expertCount,
                  expertWidth == nil || expertWidth == gate[1] else {
                throw error("blk.\(layer).ffn_gate_exps.weight is missing or not [\(hidden), width, \(expertCount)]")
            }
            expertWidth = gate[1]
        }
        for layer in 0..<leading where dims("blk.\(layer).ffn_gate.weight") == nil {
            throw error("layer \(layer) is one of the \(leading) leading dense layers but has no blk.\(layer).ffn_gate.weight")
        }
        let width = expertWidth!
        let denseWidth = leading > 0 ? dims("blk.0.ffn_gate.weight")?.last ?? width : width
        let sharedWidth = dims("blk.\(leading).ffn_gate_shexp.weight")?.last ?? 0

        var config = modelConfig(
            arch: arch, architecture: architecture, vocabSize: embedding.dims[1], layers: layers, hidden: hidden, heads: heads,
            kvHeads: kvHeads, headDim: headDim, defaultNormEps: 1e-5, expertCount: expertCount, expertsPerToken: used,
            expertWidth: width, denseWidth: denseWidth, sharedWidth: sharedWidth, normTopKProb: true,
            mlpOnlyLayers: Array(0..<leading), attentionBias: tensors["blk.0.attn_q.bias"] != nil)
        config.rope = rope
        switch architecture {
        case .glm4Moe:
            // llama_expert_gating_func_type: 0 none (glm4moe's default, sigmoid), 2 sigmoid.
            let gating = values[key("expert_gating_func")]?.intValue ?? 0
            guard gating == 0 || gating == 2 else { throw error("expert_gating_func \(gating): glm4moe is implemented with sigmoid gating (2)") }
            config.firstDenseLayers = leading
            config.normTopKProb = values[key("expert_weights_norm")]?.boolValue ?? false
            let scale = values[key("expert_weights_scale")]?.doubleValue ?? 0
            config.routedScalingFactor = scale == 0 ? 1 : Float(scale)
            config.qkNormPerHead = tensors["blk.0.attn_q_norm.weight"] != nil
        default: // gpt-oss
            guard let window = values[key("attention.sliding_window")]?.intValue, window >= 1 else {
                throw error("gpt-oss needs attention.sliding_window (a positive integer)")
            }
            guard tensors["blk.0.attn_q.bias"] != nil else { throw error("blk.0.attn_q.bias is missing (gpt-oss has q/k/v biases)") }
            config.slidingWindow = window
            // llama.cpp's `load_swa_pattern(ml, 2)`: a per-layer array, or a period n (layer l
            // slides when l % n < n - 1), 2 when absent.
            let sliding: [Bool]
            if let pattern = values[key("attention.sliding_window_pattern")]?.arrayValue {
                sliding = pattern.compactMap { $0.boolValue ?? $0.intValue.map { $0 != 0 } }
                guard sliding.count >= layers else { throw error("attention.sliding_window_pattern has \(pattern.count) entries for \(layers) layers") }
            } else {
                let period = values[key("attention.sliding_window_pattern")]?.intValue ?? 2
                sliding = (0..<layers).map { period > 0 && $0 % period < period - 1 }
            }
            config.layerTypes = (0..<layers).map { sliding[$0] ? "sliding_attention" : "full_attention" }
            config.swigluAlpha = 1.702
            config.swigluLimit = 7.0
        }
        return config
    }
}
