import Foundation

/// A model architecture MoEServe runs, by its Hugging Face class name (`config.json`'s
/// `architectures[0]`). The known ones are the descriptions in `ArchitectureRegistry`; each
/// architecture's file in `Architectures/` declares its static member (`Architecture.mixtral`).
public struct Architecture: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: String

    /// The architecture named `rawValue`, nil when no registered description has that class name.
    public init?(rawValue: String) {
        guard ArchitectureRegistry.descriptions.contains(where: { $0.className == rawValue }) else { return nil }
        self.rawValue = rawValue
    }

    /// The architecture `description` defines (for the static members in `Architectures/`).
    init(_ description: ArchitectureDescription) { rawValue = description.className }

    public init(from decoder: Decoder) throws {
        let name = try decoder.singleValueContainer().decode(String.self)
        guard let known = Architecture(rawValue: name) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "unknown architecture '\(name)'"))
        }
        self = known
    }

    /// Every registered architecture, in registry order.
    public static var allCases: [Architecture] { ArchitectureRegistry.descriptions.map(Architecture.init) }

    /// The `model_type` value that config.json uses for this architecture.
    public var modelType: String { definition.modelType }

    public var description: String { rawValue }
}

/// A model's hyper-parameters, read from `config.json` in either the hub style (top-level
/// `rope_theta`, `torch_dtype`) or the newer style (`rope_parameters`, `dtype`). This file
/// reads the keys every architecture shares; each architecture's own keys and defaults (expert
/// count and widths, routing, attention switches, MoE placement) are read by its file in
/// `Architectures/` (`ArchitectureDescription.readConfig`), as transformers applies them.
public struct ModelConfig: Sendable, Codable, Equatable {
    public var architecture: Architecture
    public var vocabSize: Int
    public var hiddenSize: Int
    public var layerCount: Int
    public var headCount: Int
    public var kvHeadCount: Int
    public var headDim: Int
    public var rmsNormEps: Float
    public var ropeTheta: Double
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool
    /// Routed experts per MoE layer.
    public var expertCount: Int
    /// Experts chosen per token.
    public var expertsPerToken: Int
    /// Width of one routed expert's MLP.
    public var expertIntermediateSize: Int
    /// Width of the dense MLP of non-MoE layers (Qwen2/3-MoE `intermediate_size`).
    public var denseIntermediateSize: Int
    /// Width of the shared expert, 0 when there is none (Qwen2-MoE).
    public var sharedExpertIntermediateSize: Int
    /// Renormalise the top-k routing weights to sum to one.
    public var normTopKProb: Bool
    /// Every `decoderSparseStep`-th layer is MoE (Qwen2/3-MoE).
    public var decoderSparseStep: Int
    /// Layers forced to a dense MLP (Qwen2/3-MoE).
    public var mlpOnlyLayers: [Int]
    /// q/k/v projections carry a bias.
    public var attentionBias: Bool
    /// Clamp q, k, v to ±clipQKV after projection (OLMoE), nil when unset.
    public var clipQKV: Float?
    /// Mixtral's sliding attention window, nil for full attention.
    public var slidingWindow: Int?
    public var bosTokenId: Int?
    public var eosTokenIds: [Int]
    /// The checkpoint's stored dtype name ("bfloat16", "float32", ...), if given.
    public var dtypeName: String?
    /// RoPE variant (default or YaRN) and the rotating fraction of each head.
    public var rope: RopeParameters = RopeParameters()
    /// Multi-head latent attention's dimensions (DeepSeek-V2/V3), nil for standard attention.
    public var latentAttention: LatentAttentionConfig? = nil
    /// The first `firstDenseLayers` layers have a dense MLP (`first_k_dense_replace`).
    public var firstDenseLayers: Int = 0
    /// From `firstDenseLayers` on, every `moeLayerFrequency`-th layer is MoE (`moe_layer_freq`).
    public var moeLayerFrequency: Int = 1
    /// Group-limited routing (`n_group`, `topk_group`), nil for a plain top-k.
    public var routerGroups: RouterSpec.GroupLimit? = nil
    /// Multiplies the routed experts' mixing weights (`routed_scaling_factor`).
    public var routedScalingFactor: Float = 1
    /// Per-head q/k RMSNorm switched on by config (GLM-4.5 `use_qk_norm`).
    public var qkNormPerHead: Bool = false
    /// Gated delta-net layers and their shapes (Qwen3-Next), nil when every layer uses full attention.
    public var linearAttention: LinearAttentionConfig? = nil

    /// Whether layer `index` mixes tokens with a gated delta-net (no KV cache) rather than attention.
    public func isLinearAttentionLayer(_ index: Int) -> Bool { linearAttention?.layers.contains(index) ?? false }

    /// Layers that keep keys and values (full attention): all but the linear-attention ones.
    public var kvLayerCount: Int { layerCount - (linearAttention?.layers.count ?? 0) }
    /// Each layer's attention kind from `layer_types` (`sliding_attention`, `full_attention`);
    /// nil when the config has none (gpt-oss then alternates, starting with sliding).
    public var layerTypes: [String]? = nil
    /// The clamped SwiGLU's sigmoid gain and clamp (gpt-oss `swiglu_alpha`, `swiglu_limit`).
    public var swigluAlpha: Float? = nil
    public var swigluLimit: Float? = nil

    /// Whether layer `index` has a routed-expert MoE block (otherwise a dense MLP).
    public func isMoELayer(_ index: Int) -> Bool { architecture.definition.isMoELayer(self, index) }

    /// Indices of the MoE layers.
    public var moeLayers: [Int] { (0..<layerCount).filter(isMoELayer) }

    /// Parses config.json at `url`.
    public static func load(from url: URL) throws -> ModelConfig {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw ModelFormatError.file(url.path, "cannot read: \(error.localizedDescription)")
        }
        return try parse(data, file: url.path)
    }

    /// Parses the JSON text of a config.json; `file` names it in errors.
    public static func parse(_ data: Data, file: String) throws -> ModelConfig {
        guard let document = try? JSONValue.parse([UInt8](data)), let json = document.objectValue else {
            throw ModelFormatError.file(file, "not a JSON object")
        }
        return try ConfigReader(json: json, file: file).read()
    }
}

/// Typed access to a config.json dictionary with errors that name the key (the generic
/// parsing helpers the architecture files read their keys with).
public struct ConfigReader: Sendable {
    /// The config.json object.
    public let json: [String: JSONValue]
    /// Names the file in errors.
    public let file: String

    /// An integer that must be present.
    public func int(_ key: String) throws -> Int {
        guard let value = optionalInt(key) else { throw ModelFormatError.file(file, "missing or non-integer '\(key)'") }
        return value
    }

    /// An integer, nil when absent or null.
    public func optionalInt(_ key: String) -> Int? { json[key]?.intValue }

    /// A number, nil when absent or null.
    public func double(_ key: String) -> Double? { json[key]?.doubleValue }

    /// Routed experts per layer: `num_experts` on the hub, `num_local_experts` in some
    /// transformers versions' configs for the same architectures.
    public func expertCountValue() throws -> Int {
        if let count = optionalInt("num_experts") ?? optionalInt("num_local_experts") { return count }
        throw ModelFormatError.file(file, "missing or non-integer 'num_experts'")
    }

    /// A boolean, `value` when absent or null.
    public func bool(_ key: String, default value: Bool) -> Bool { json[key]?.boolValue ?? value }

    /// An error naming the file.
    public func error(_ message: String) -> ModelFormatError { ModelFormatError.file(file, message) }

    func read() throws -> ModelConfig {
        let architectureName = json["architectures"]?.arrayValue?.first?.stringValue
        let modelType = json["model_type"]?.stringValue
        guard let architecture = Architecture.allCases.first(where: { $0.rawValue == architectureName })
            ?? Architecture.allCases.first(where: { architectureName == nil && $0.modelType == modelType }) else {
            let supported = Architecture.allCases.map(\.rawValue).joined(separator: ", ")
            throw ModelFormatError.file(file, "unknown architecture '\(architectureName ?? modelType ?? "none")' (supported: \(supported))")
        }
        let hidden = try int("hidden_size")
        let heads = try int("num_attention_heads")
        let kvHeads = optionalInt("num_key_value_heads") ?? heads
        // Checked before `hidden / heads`: with -Ounchecked a zero divisor is a SIGFPE, not an error.
        guard heads > 0, kvHeads > 0, heads % kvHeads == 0 else {
            throw ModelFormatError.file(file, "num_attention_heads (\(heads)) must be a multiple of num_key_value_heads (\(kvHeads))")
        }
        let headDim = optionalInt("head_dim") ?? hidden / heads
        let ropeParameters = json["rope_parameters"]?.objectValue
        let maxPositions = optionalInt("max_position_embeddings") ?? 4096
        let rope = try self.ropeParameters(maxPositionEmbeddings: maxPositions)
        guard let theta = ropeDictionary?["rope_theta"]?.doubleValue ?? ropeParameters?["rope_theta"]?.doubleValue
                ?? double("rope_theta") else {
            throw ModelFormatError.file(file, "missing 'rope_theta' (top level or in 'rope_parameters')")
        }

        let eos: [Int]
        if let list = json["eos_token_id"]?.arrayValue { eos = list.compactMap(\.intValue) }
        else if let single = optionalInt("eos_token_id") { eos = [single] }
        else { eos = [] }

        var config = ModelConfig(
            architecture: architecture,
            vocabSize: try int("vocab_size"),
            hiddenSize: hidden,
            layerCount: try int("num_hidden_layers"),
            headCount: heads,
            kvHeadCount: kvHeads,
            headDim: headDim,
            rmsNormEps: Float(double("rms_norm_eps") ?? 1e-6),
            ropeTheta: theta,
            maxPositionEmbeddings: maxPositions,
            tieWordEmbeddings: bool("tie_word_embeddings", default: false),
            // Filled by the architecture's `readConfig` below.
            expertCount: 0,
            expertsPerToken: try int("num_experts_per_tok"),
            expertIntermediateSize: 0,
            denseIntermediateSize: 0,
            sharedExpertIntermediateSize: 0,
            normTopKProb: false,
            decoderSparseStep: 1,
            mlpOnlyLayers: [],
            attentionBias: false,
            clipQKV: nil,
            slidingWindow: nil,
            bosTokenId: optionalInt("bos_token_id"),
            eosTokenIds: eos,
            dtypeName: json["dtype"]?.stringValue ?? json["torch_dtype"]?.stringValue,
            rope: rope
        )
        try architecture.definition.readConfig(self, &config)
        let topK = config.expertsPerToken
        guard topK >= 1, topK <= config.expertCount else {
            throw ModelFormatError.file(file, "num_experts_per_tok (\(topK)) must be between 1 and the number of experts (\(config.expertCount))")
        }
        return config
    }
}
