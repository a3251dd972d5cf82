/// Builds a `ModelConfig` from GGUF metadata (`{arch}.block_count`, `{arch}.attention.*`,
/// `{arch}.expert_*`, ...) and tensor shapes, for llama.cpp's MoE architectures MoEServe runs.
/// Where llama.cpp's graph fixes a switch that a Hugging Face config would carry (whether
/// the top-k weights are renormalised), llama.cpp's choice is taken, so outputs match it.
struct GGUFConfigReader {
    let values: [String: GGUFValue]
    let tensors: [String: GGUFTensorInfo]
    let file: String

    /// llama.cpp architecture → ours, and whether llama.cpp renormalises the top-k weights.
    static let architectures: [String: (Architecture, Bool)] = [
        "qwen3moe": (.qwen3Moe, true),
        "qwen2moe": (.qwen2Moe, false),
        "olmoe": (.olmoe, false),
        "llama": (.mixtral, true),
    ]

    /// llama.cpp's `deepseek2` (DeepSeek-V2/V3, Kimi-K2), read by `readDeepseek2()` in GGUFDeepseek2.swift.
    static let deepseek2Architecture = "deepseek2"

    func error(_ message: String) -> ModelFormatError { ModelFormatError.file(file, message) }

    func int(_ key: String) throws -> Int {
        guard let v = values[key]?.intValue else { throw error("missing or non-integer metadata '\(key)'") }
        return v
    }

    /// The ids that end generation, as llama.cpp's end-of-generation set starts: the file's
    /// eos, eot and eom tokens, each once, in that order.
    func endOfSequenceIds() -> [Int] {
        var ids: [Int] = []
        for name in ["eos", "eot", "eom"] {
            if let id = values["tokenizer.ggml.\(name)_token_id"]?.intValue, !ids.contains(id) { ids.append(id) }
        }
        return ids
    }

    /// The attention shape every architecture but `deepseek2` stores under the same keys:
    /// `block_count` (less `nextn_predict_layers` where llama.cpp appends those blocks),
    /// heads, kv heads and one head width for keys and values.
    struct AttentionShape {
        let layers: Int, hidden: Int, heads: Int, kvHeads: Int, headDim: Int
    }

    /// Reads and checks `AttentionShape` for `arch`; `appendedNextN`: the file's
    /// `nextn_predict_layers` blocks come after the layers the model runs (GLM, Qwen3-Next).
    func attentionShape(arch: String, appendedNextN: Bool = false) throws -> AttentionShape {
        func key(_ name: String) -> String { "\(arch).\(name)" }
        let blocks = try int(key("block_count"))
        let nextn = appendedNextN ? values[key("nextn_predict_layers")]?.intValue ?? 0 : 0
        let layers = blocks - nextn
        let hidden = try int(key("embedding_length"))
        let heads = try int(key("attention.head_count"))
        let kvHeads = values[key("attention.head_count_kv")]?.intValue ?? heads
        guard layers > 0, layers <= 4096, nextn >= 0, hidden > 0, heads > 0, kvHeads > 0, heads % kvHeads == 0 else {
            let layerText = appendedNextN ? "\(blocks) blocks (\(nextn) next-token prediction)" : "\(layers) layers"
            throw error("inconsistent hyper-parameters: \(layerText), hidden \(hidden), \(heads) heads, \(kvHeads) kv heads")
        }
        let headDim = values[key("attention.key_length")]?.intValue ?? hidden / heads
        if let valueLength = values[key("attention.value_length")]?.intValue, valueLength != headDim {
            throw error("attention.value_length \(valueLength) differs from key_length \(headDim) (not supported)")
        }
        return AttentionShape(layers: layers, hidden: hidden, heads: heads, kvHeads: kvHeads, headDim: headDim)
    }

    /// A `ModelConfig` for `arch` with the fields every reader takes alike from the metadata (norm
    /// epsilon, rope base, context length, tied embeddings when there is no `output.weight`, special
    /// ids, file type) and the architecture's own from the caller; no sliding window, no QKV clip,
    /// every layer sparse unless in `mlpOnlyLayers`.
    func modelConfig(arch: String, architecture: Architecture, vocabSize: Int, layers: Int, hidden: Int, heads: Int,
                     kvHeads: Int, headDim: Int, defaultNormEps: Double = 1e-6, expertCount: Int, expertsPerToken: Int,
                     expertWidth: Int, denseWidth: Int, sharedWidth: Int, normTopKProb: Bool, mlpOnlyLayers: [Int] = [],
                     attentionBias: Bool = false) -> ModelConfig {
        func key(_ name: String) -> String { "\(arch).\(name)" }
        return ModelConfig(
            architecture: architecture,
            vocabSize: vocabSize,
            hiddenSize: hidden,
            layerCount: layers,
            headCount: heads,
            kvHeadCount: kvHeads,
            headDim: headDim,
            rmsNormEps: Float(values[key("attention.layer_norm_rms_epsilon")]?.doubleValue ?? defaultNormEps),
            ropeTheta: values[key("rope.freq_base")]?.doubleValue ?? 10_000,
            maxPositionEmbeddings: values[key("context_length")]?.intValue ?? 4096,
            tieWordEmbeddings: tensors["output.weight"] == nil,
            expertCount: expertCount,
            expertsPerToken: expertsPerToken,
            expertIntermediateSize: expertWidth,
            denseIntermediateSize: denseWidth,
            sharedExpertIntermediateSize: sharedWidth,
            normTopKProb: normTopKProb,
            decoderSparseStep: 1,
            mlpOnlyLayers: mlpOnlyLayers,
            attentionBias: attentionBias,
            clipQKV: nil,
            slidingWindow: nil,
            bosTokenId: values["tokenizer.ggml.bos_token_id"]?.intValue,
            eosTokenIds: endOfSequenceIds(),
            dtypeName: values["general.file_type"]?.intValue.map { "gguf file type \($0)" } ?? "gguf")
    }

    func read() throws -> ModelConfig {
        guard let arch = values["general.architecture"]?.stringValue else { throw error("no general.architecture in the metadata") }
        if let architecture = Self.glmGptOssArchitectures[arch] { return try readGlmGptOss(arch: arch, architecture: architecture) }
        if arch == Self.deepseek2Architecture { return try readDeepseek2() } // GGUFDeepseek2.swift
        if arch == Self.qwen3NextArchitecture { return try readQwen3Next() } // GGUFQwen3Next.swift
        if arch == Self.miniMaxM2Architecture { return try readMiniMaxM2() } // GGUFMiniMaxM2.swift
        guard let (architecture, llamaNormalizes) = Self.architectures[arch] else {
            let known = (Array(Self.architectures.keys) + Self.glmGptOssArchitectures.keys + [Self.deepseek2Architecture, Self.qwen3NextArchitecture, Self.miniMaxM2Architecture]).sorted().joined(separator: ", ")
            throw error("unsupported GGUF architecture '\(arch)' (supported: \(known))")
        }
        func key(_ name: String) -> String { "\(arch).\(name)" }
        let shape = try attentionShape(arch: arch)
        let (layers, hidden, heads, kvHeads, headDim) = (shape.layers, shape.hidden, shape.heads, shape.kvHeads, shape.headDim)
        if let rotary = values[key("rope.dimension_count")]?.intValue, rotary != headDim {
            throw error("rope.dimension_count \(rotary) differs from the head size \(headDim) (partial rotary is not supported)")
        }
        if let scaling = values[key("rope.scaling.type")]?.stringValue, scaling != "none" {
            throw error("unsupported rope scaling '\(scaling)' (only the default RoPE is implemented)")
        }
        guard let embedding = tensors["token_embd.weight"], embedding.dims.count == 2, embedding.dims[0] == hidden else {
            throw error("token_embd.weight is missing or not [\(hidden), vocab]")
        }
        let expertCount = values[key("expert_count")]?.intValue ?? 0
        guard expertCount > 0 else { throw error("'\(arch)' without experts (expert_count) is a dense model; MoEServe runs MoE models") }

        // What shapes settle: expert widths, dense layers, the shared expert.
        func dims(_ name: String) -> [Int]? { tensors[name]?.dims }
        var moeLayers: [Int] = [], denseLayers: [Int] = []
        var expertWidth: Int?
        for layer in 0..<layers {
            if let gate = dims("blk.\(layer).ffn_gate_exps.weight") {
                guard gate.count == 3, gate[0] == hidden, gate[2] == expertCount, expertWidth == nil || expertWidth == gate[1] else {
                    throw error("blk.\(layer).ffn_gate_exps.weight has ggml shape \(gate); expected [\(hidden), width, \(expertCount)]")
                }
                expertWidth = gate[1]
                moeLayers.append(layer)
            } else {
                denseLayers.append(layer)
            }
        }
        guard let expertWidth else { throw error("no blk.N.ffn_gate_exps.weight tensors: no routed experts") }
        let denseWidth = denseLayers.first.flatMap { dims("blk.\($0).ffn_gate.weight")?.last } ?? values[key("feed_forward_length")]?.intValue ?? expertWidth
        if architecture != .qwen2Moe && architecture != .qwen3Moe && !denseLayers.isEmpty {
            throw error("layers \(denseLayers) have no experts, which '\(arch)' does not allow")
        }
        let sharedWidth = moeLayers.first.flatMap { dims("blk.\($0).ffn_gate_shexp.weight")?.last } ?? 0

        // No sliding window: llama.cpp's `llama` graph attends to the whole context (Mixtral's window unused).
        let config = modelConfig(
            arch: arch, architecture: architecture, vocabSize: embedding.dims[1], layers: layers, hidden: hidden, heads: heads,
            kvHeads: kvHeads, headDim: headDim, expertCount: expertCount, expertsPerToken: try int(key("expert_used_count")),
            expertWidth: expertWidth, denseWidth: denseWidth, sharedWidth: sharedWidth,
            normTopKProb: values[key("expert_weights_norm")]?.boolValue ?? llamaNormalizes, mlpOnlyLayers: denseLayers,
            attentionBias: architecture == .qwen2Moe || tensors["blk.0.attn_q.bias"] != nil)
        guard config.expertsPerToken >= 1, config.expertsPerToken <= expertCount else {
            throw error("expert_used_count (\(config.expertsPerToken)) must be between 1 and expert_count (\(expertCount))")
        }
        return config
    }
}
