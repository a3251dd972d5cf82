/// Where q/k normalisation sits in an architecture's attention.
public enum QKNormalization: Sendable, Equatable {
    /// No q/k norm (Mixtral, Qwen2-MoE).
    case none
    /// RMSNorm over each head's `headDim` values, before RoPE (Qwen3-MoE).
    case perHead
    /// RMSNorm over the whole q and k projections, before splitting into heads (OLMoE).
    case wholeProjection
}

/// The switches of grouped-query causal self-attention with RoPE (the only attention kind so
/// far; multi-head latent or linear attention would be layers of their own beside it).
public struct AttentionSpec: Sendable, Equatable {
    /// q/k normalisation style.
    public var qkNormalization: QKNormalization
    /// The q/k/v projections must carry biases (a checkpoint without them is an error).
    public var requiresBias: Bool
    /// Clamp q, k and v to ±clip after projection and normalisation; nil for none.
    public var clipQKV: Float?
    /// Keys visible to a query: the last `slidingWindow` positions; nil for all.
    public var slidingWindow: Int?
    /// `q_proj` yields, per head, the query and then as many gate values; the attention output
    /// is multiplied by `sigmoid(gate)` before `o_proj` (Qwen3-Next's gated attention).
    public var outputGate: Bool = false
    /// Learned attention sinks (gpt-oss): `self_attn.sinks`, one logit per head that joins each
    /// query's softmax and is then dropped, so a head can attend to nothing.
    public var sinks: Bool
    /// Which layers the sliding window applies to (`layer_types`); nil: every layer.
    public var slidingLayers: [Bool]?

    public init(qkNormalization: QKNormalization, requiresBias: Bool, clipQKV: Float? = nil, slidingWindow: Int? = nil,
                outputGate: Bool = false, sinks: Bool = false, slidingLayers: [Bool]? = nil) {
        self.qkNormalization = qkNormalization
        self.requiresBias = requiresBias
        self.clipQKV = clipQKV
        self.slidingWindow = slidingWindow
        self.outputGate = outputGate
        self.sinks = sinks
        self.slidingLayers = slidingLayers
    }

    /// The sliding window of layer `layer`: nil when it attends to every position.
    public func slidingWindow(layer: Int) -> Int? {
        guard let slidingWindow else { return nil }
        if let slidingLayers { return layer < slidingLayers.count && slidingLayers[layer] ? slidingWindow : nil }
        return slidingWindow
    }
}

/// The nonlinearity of an MLP's gate: `down( act(gate·x) ⊙ up·x )`.
public enum Activation: Sendable, Equatable {
    /// SwiGLU: silu(gate·x) ⊙ up·x (every architecture so far).
    case silu
    /// gpt-oss's clamped SwiGLU: with g = min(gate·x, limit) and u = clamp(up·x, ±limit),
    /// `g · sigmoid(alpha · g) · (u + 1)`.
    case clampedSwiGLU(alpha: Float, limit: Float)
}

/// Routed experts stored fused per layer, as gpt-oss stores them: `gate_up_proj`
/// `[experts, hidden, 2·width]` (multiplied as `x · W`, gate and up in interleaved columns
/// 2i and 2i+1) with `gate_up_proj_bias` `[experts, 2·width]`, and `down_proj`
/// `[experts, width, hidden]` with `down_proj_bias` `[experts, hidden]`. In an MXFP4 checkpoint
/// each matrix is instead `<name>_blocks` `[experts, rows, cols/32, 16]` (two e2m1 values a
/// byte, low nibble first) and `<name>_scales` `[experts, rows, cols/32]` (e8m0), with rows the
/// outputs (`2·width` interleaved, or `hidden`).
public struct FusedExpertNames: Sendable, Equatable {
    /// `model.layers.L.mlp.experts.gate_up_proj`
    public var gateUp: String
    /// `model.layers.L.mlp.experts.gate_up_proj_bias`
    public var gateUpBias: String
    /// `model.layers.L.mlp.experts.down_proj`
    public var down: String
    /// `model.layers.L.mlp.experts.down_proj_bias`
    public var downBias: String

    public init(gateUp: String, gateUpBias: String, down: String, downBias: String) {
        self.gateUp = gateUp
        self.gateUpBias = gateUpBias
        self.down = down
        self.downBias = downBias
    }

    /// Every tensor name these experts may occupy in a checkpoint (bf16 or MXFP4 form).
    public var allNames: [String] {
        [gateUp, gateUp + "_blocks", gateUp + "_scales", gateUpBias, down, down + "_blocks", down + "_scales", downBias]
    }
}

/// An always-on expert that runs beside the routed ones in every MoE layer.
public struct SharedExpertSpec: Sendable, Equatable {
    /// Prefix of its `gate_proj`/`up_proj`/`down_proj` tensors.
    public var prefix: String
    /// Its width (`intermediate_size` of the MLP).
    public var width: Int
    /// `[1, hidden]` weight whose `sigmoid(· x)` scales the shared expert's output (Qwen2-MoE).
    public var sigmoidGateName: String

    /// Whether a sigmoid gate scales the output (Qwen2-MoE); DeepSeek's shared experts are plain sums.
    public var isGated: Bool = true

    public init(prefix: String, width: Int, sigmoidGateName: String) {
        self.prefix = prefix
        self.width = width
        self.sigmoidGateName = sigmoidGateName
    }

    /// A shared expert added with weight 1 (DeepSeek, GLM-4.5: `n_shared_experts` of them fused into one MLP).
    public init(ungatedPrefix prefix: String, width: Int) {
        self.prefix = prefix
        self.width = width
        self.sigmoidGateName = ""
        isGated = false
    }
}

/// Names of one expert's three tensors.
public struct ExpertTensorNames: Sendable, Equatable {
    public var gate: String
    public var up: String
    public var down: String

    public init(gate: String, up: String, down: String) {
        self.gate = gate
        self.up = up
        self.down = down
    }
}

/// Everything that distinguishes one architecture from another, over the shared layer code:
/// its config.json keys and defaults, which layers are MoE, its router, attention switches,
/// activation, shared expert and tensor names. Each file in `Architectures/` builds one; the
/// shared layers (`MoEModels/Layers`), the predictor, the packer and the cache read only this.
public struct ArchitectureDescription: Sendable {
    /// The Hugging Face class name in config.json's `architectures` (`MixtralForCausalLM`).
    public var className: String
    /// The `model_type` value that config.json uses for this architecture.
    public var modelType: String
    /// Reads this architecture's own keys (expert count and widths, routing, attention
    /// switches, MoE placement) into `config`, whose generic fields are already filled.
    public var readConfig: @Sendable (ConfigReader, inout ModelConfig) throws -> Void
    /// Whether layer `index` of `config` has a routed-expert MoE block (otherwise a dense MLP).
    public var isMoELayer: @Sendable (ModelConfig, Int) -> Bool
    /// The config.json key that holds the routed experts' width (rewritten when widening).
    public var expertWidthKey: String
    /// The router of `config`'s MoE layers.
    public var router: @Sendable (ModelConfig) -> RouterSpec
    /// The attention switches of `config`.
    public var attention: @Sendable (ModelConfig) -> AttentionSpec
    /// The MLPs' activation (dense layers, routed and shared experts).
    public var activation: Activation
    /// The shared expert of MoE layer `layer`, nil when the architecture has none.
    public var sharedExpert: @Sendable (ModelConfig, Int) -> SharedExpertSpec?
    /// Prefix of the feed-forward block of layer `l` (`model.layers.l.mlp` or `...block_sparse_moe`).
    public var feedForwardPrefix: @Sendable (Int) -> String
    /// The router's weight, `[experts, hidden]`.
    public var routerName: @Sendable (Int) -> String
    /// Tensor names of routed expert `e` in layer `l`.
    public var expertTensorNames: @Sendable (Int, Int) -> ExpertTensorNames
    /// The score-correction bias of layer `l`'s router (`e_score_correction_bias`, `[experts]`),
    /// nil when the architecture has none.
    public var correctionBiasName: @Sendable (Int) -> String? = { _ in nil }
    /// Added to every stored RMSNorm weight of the decoder (layer norms, final norm, q/k norms):
    /// Qwen3-Next stores `w` and scales by `1 + w`; 0 for the others.
    public var normWeightOffset: Float = 0
    /// Tensors the model never reads, by name prefix (Qwen3-Next's multi-token-prediction head
    /// `mtp.`, with experts of its own): left out of a packed store and of the dense bytes.
    public var unusedTensorPrefixes: [String] = []

    /// Whether tensor `name` is one this architecture never reads.
    public func isUnusedTensor(_ name: String) -> Bool { unusedTensorPrefixes.contains { name.hasPrefix($0) } }
    /// The activation when it depends on the config (gpt-oss's clamp); nil: `activation`.
    public var configuredActivation: (@Sendable (ModelConfig) -> Activation)? = nil
    /// The router's bias `[experts]` of layer `l`, added to its logits; nil for none.
    public var routerBiasName: (@Sendable (Int) -> String)? = nil
    /// Layer `l`'s routed experts when they are stored fused (gpt-oss); nil when each expert
    /// has tensors of its own (`expertTensorNames`).
    public var fusedExperts: (@Sendable (Int) -> FusedExpertNames)? = nil

    /// The MLPs' activation for `config`.
    public func activation(for config: ModelConfig) -> Activation { configuredActivation?(config) ?? activation }

    /// Attention tensors of layer `l`: `model.layers.l.self_attn.<name>`.
    public func attentionPrefix(_ layer: Int) -> String { "model.layers.\(layer).self_attn" }

    /// The description for `architecture`.
    public static func of(_ architecture: Architecture) -> ArchitectureDescription { architecture.definition }
}

/// The known architectures. Adding one is its file in `Architectures/` plus its line here.
public enum ArchitectureRegistry {
    public static let descriptions: [ArchitectureDescription] = [
        Mixtral.description,
        Qwen2Moe.description,
        Qwen3Moe.description,
        Olmoe.description,
        DeepseekV2.description,
        DeepseekV3.description,
        Glm4Moe.description,
        MiniMaxM2.description,
        Qwen3Next.description,
        GptOss.description,
    ]
}

extension Architecture {
    /// This architecture's description (its file in `Architectures/`).
    public var definition: ArchitectureDescription {
        guard let found = ArchitectureRegistry.descriptions.first(where: { $0.className == rawValue }) else {
            preconditionFailure("Architecture values are made only from registered descriptions")
        }
        return found
    }
}

/// Expert names in the `mlp.experts.E.{gate,up,down}_proj` style that Qwen and OLMoE use.
func projectionStyleExpertNames(layer: Int, expert: Int) -> ExpertTensorNames {
    let prefix = "model.layers.\(layer).mlp.experts.\(expert)"
    return ExpertTensorNames(gate: "\(prefix).gate_proj.weight", up: "\(prefix).up_proj.weight", down: "\(prefix).down_proj.weight")
}
