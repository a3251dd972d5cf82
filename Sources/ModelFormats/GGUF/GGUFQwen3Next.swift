import Foundation

/// llama.cpp's `qwen3next` (Qwen3-Next: gated delta-net linear attention beside gated full
/// attention), read as `llama_model_qwen3next` reads it, and the names of its tensors.
///
/// What the converter (`conversion/qwen.py`, `Qwen3NextModel`) does and how it is undone:
/// - `in_proj_qkvz` (per key head `[q | k | v | z]`) is regrouped into `attn_qkv` (every head's q,
///   then k, then v: the convolution's channel order) and `attn_gate` (every value head's z); the
///   delta-net reads them as `in_proj_qkv`/`in_proj_z` (`GatedDeltaNet.InputProjection.split`).
///   An older file's `ssm_in` is `in_proj_qkvz` as it was.
/// - `A_log` is stored as `ssm_a` = −exp(A_log) and served as `A_log` = ln(−ssm_a) (the layer
///   takes −exp of it again: the same value to within a float rounding).
/// - `dt_bias` → `ssm_dt.bias`; `conv1d` squeezed to ggml `[kernel, channels]` (the same values
///   in the same order as `[channels, 1, kernel]`); `in_proj_ba` → `ssm_ba`, `norm` → `ssm_norm`,
///   `out_proj` → `ssm_out`.
/// - +1 is folded into every RMSNorm weight but the delta-net's gated norm; Qwen3-Next's layers add
///   it (`normWeightOffset`), so it is taken off again when read (`qwen3NextNormOffset`): exact
///   for stored weights of at least 0.5 (all of them in practice).
/// - The published checkpoints' multi-token-prediction block is appended as `blk.<layers>` with
///   `nextn_predict_layers`; llama.cpp's main graph skips it, and so does MoEServe.
///
/// Metadata: `ssm.conv_kernel`, `ssm.state_size` (the key and value head width), `ssm.group_count`
/// (key heads), `ssm.time_step_rank` (value heads), `ssm.inner_size` (value heads × width);
/// `attention.recurrent_layers` (per layer) or else every layer but each
/// `full_attention_interval`-th (default 4) is a delta-net; `rope.dimension_count` the rotary part
/// of each head. Routing: softmax, top-k, always renormalised (llama.cpp's graph fixes it); every layer is MoE with a shared expert behind a sigmoid gate.
extension GGUFConfigReader {
    /// llama.cpp's name for Qwen3-Next.
    static let qwen3NextArchitecture = "qwen3next"

    func readQwen3Next() throws -> ModelConfig {
        let arch = Self.qwen3NextArchitecture
        func key(_ name: String) -> String { "\(arch).\(name)" }
        func dims(_ name: String) -> [Int]? { tensors[name]?.dims }
        let shape = try attentionShape(arch: arch, appendedNextN: true)
        let (layers, hidden, heads, kvHeads, headDim) = (shape.layers, shape.hidden, shape.heads, shape.kvHeads, shape.headDim)
        let rotary = values[key("rope.dimension_count")]?.intValue ?? headDim / 4
        guard rotary >= 2, rotary <= headDim, rotary % 2 == 0 else {
            throw error("rope.dimension_count \(rotary) must be even and at most the head size \(headDim)")
        }
        if let scaling = values[key("rope.scaling.type")]?.stringValue, scaling != "none" {
            throw error("unsupported rope scaling '\(scaling)' for qwen3next (only the default RoPE is implemented)")
        }
        guard let embedding = tensors["token_embd.weight"], embedding.dims.count == 2, embedding.dims[0] == hidden else {
            throw error("token_embd.weight is missing or not [\(hidden), vocab]")
        }

        // The gated delta-net layers and shapes.
        let keyHeads = try int(key("ssm.group_count")), valueHeads = try int(key("ssm.time_step_rank"))
        let keyHeadDim = try int(key("ssm.state_size")), inner = try int(key("ssm.inner_size"))
        let kernel = try int(key("ssm.conv_kernel"))
        guard keyHeads > 0, valueHeads > 0, valueHeads % keyHeads == 0, keyHeadDim > 0, inner > 0, inner % valueHeads == 0, kernel >= 1 else {
            throw error("inconsistent delta-net shapes: \(keyHeads) key heads, \(valueHeads) value heads, state size \(keyHeadDim), inner size \(inner), conv kernel \(kernel)")
        }
        let recurrent: [Bool]
        if let array = values[key("attention.recurrent_layers")]?.arrayValue {
            recurrent = array.compactMap { $0.boolValue ?? $0.intValue.map { $0 != 0 } }
            guard recurrent.count >= layers else { throw error("attention.recurrent_layers has \(array.count) entries for \(layers) layers") }
        } else {
            let interval = values[key("full_attention_interval")]?.intValue ?? 4
            guard interval >= 1 else { throw error("full_attention_interval \(interval) must be at least 1") }
            recurrent = (0..<layers).map { ($0 + 1) % interval != 0 }
        }
        let linear = LinearAttentionConfig(layers: (0..<layers).filter { recurrent[$0] }, keyHeadCount: keyHeads, valueHeadCount: valueHeads,
                                           keyHeadDim: keyHeadDim, valueHeadDim: inner / valueHeads, convKernel: kernel)

        // Every trunk layer is MoE (llama.cpp requires ffn_gate_inp in each), with a shared expert.
        let expertCount = try int(key("expert_count"))
        let used = try int(key("expert_used_count"))
        guard expertCount > 0, used >= 1, used <= expertCount else {
            throw error("expert_used_count (\(used)) must be between 1 and expert_count (\(expertCount))")
        }
        var expertWidth: Int?
        for layer in 0..<layers {
            guard let gate = dims("blk.\(layer).ffn_gate_exps.weight"), gate.count == 3, gate[0] == hidden, gate[2] == expertCount,
                  expertWidth == nil || expertWidth == gate[1] else {
                throw error("blk.\(layer).ffn_gate_exps.weight is missing or not [\(hidden), width, \(expertCount)]")
            }
            expertWidth = gate[1]
        }
        let width = expertWidth!
        let sharedWidth = dims("blk.0.ffn_gate_shexp.weight")?.last ?? 0
        let firstFull = (0..<layers).first { !recurrent[$0] }

        // llama.cpp's qwen3next graph always renormalises the top-k weights.
        var config = modelConfig(
            arch: arch, architecture: .qwen3Next, vocabSize: embedding.dims[1], layers: layers, hidden: hidden, heads: heads,
            kvHeads: kvHeads, headDim: headDim, expertCount: expertCount, expertsPerToken: used, expertWidth: width,
            denseWidth: values[key("feed_forward_length")]?.intValue ?? width, sharedWidth: sharedWidth, normTopKProb: true,
            attentionBias: firstFull.map { tensors["blk.\($0).attn_q.bias"] != nil } ?? false)
        config.rope.partialRotaryFactor = Double(rotary) / Double(headDim)
        config.linearAttention = linear
        // The converter writes no expert_weights_scale for this architecture; a scaled file is refused, not misread.
        if let scale = values[key("expert_weights_scale")]?.doubleValue, scale != 0, scale != 1 {
            throw error("expert_weights_scale \(scale) is not supported for \(arch) (its router has no scaling)")
        }
        return config
    }
}

extension GGUFNames {
    /// The names of llama.cpp's `qwen3next` tensors that the shared map does not give: the
    /// delta-net's (`ssm_*`, `attn_qkv`/`attn_gate`) and the post-attention norm
    /// (`post_attention_norm`, not `ffn_norm`). Empty for other architectures.
    static func qwen3NextNames(config: ModelConfig) -> [String: GGUFTensorReference] {
        guard config.architecture == .qwen3Next else { return [:] }
        let description = config.architecture.definition
        var map: [String: GGUFTensorReference] = [:]
        for layer in 0..<config.layerCount {
            let blk = "blk.\(layer)"
            map["model.layers.\(layer).post_attention_layernorm.weight"] = .init(name: "\(blk).post_attention_norm.weight")
            guard config.isLinearAttentionLayer(layer) else { continue }
            let prefix = description.linearAttentionPrefix(layer)
            for (ours, theirs) in [("in_proj_qkvz.weight", "ssm_in.weight"), ("in_proj_qkv.weight", "attn_qkv.weight"),
                                   ("in_proj_z.weight", "attn_gate.weight"), ("in_proj_ba.weight", "ssm_ba.weight"),
                                   ("conv1d.weight", "ssm_conv1d.weight"), ("A_log", "ssm_a"), ("dt_bias", "ssm_dt.bias"),
                                   ("norm.weight", "ssm_norm.weight"), ("out_proj.weight", "ssm_out.weight")] {
                map["\(prefix).\(ours)"] = .init(name: "\(blk).\(theirs)")
            }
        }
        return map
    }
}

extension GGUFModel {
    /// How a `qwen3next` file's 1-D tensor `tensor` (served as Hugging Face `name`) differs from
    /// what the Hugging Face checkpoint holds, undone by `vector`: the converter stores
    /// `ssm_a` = −exp(A_log), and w + 1 for every RMSNorm weight but the delta-net's gated norm.
    func qwen3NextUnfold(_ values: inout [Float], name: String, tensor: String) {
        guard config.architecture == .qwen3Next else { return }
        if tensor.hasSuffix(".ssm_a") {
            values = values.map { logf(-$0) }
        } else if tensor.hasSuffix("norm.weight") && !tensor.hasSuffix(".ssm_norm.weight") {
            let offset = config.architecture.definition.normWeightOffset
            values = values.map { $0 - offset }
        }
    }
}
