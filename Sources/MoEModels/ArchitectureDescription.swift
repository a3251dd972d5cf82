import ModelFormats

/// Where q/k normalisation sits in an architecture's attention.
public enum QKNormalization: Sendable {
    /// No q/k norm (Mixtral, Qwen2-MoE).
    case none
    /// RMSNorm over each head's `headDim` values, before RoPE (Qwen3-MoE).
    case perHead
    /// RMSNorm over the whole q and k projections, before splitting into heads (OLMoE).
    case wholeProjection
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

/// What distinguishes one architecture from another: tensor names and the few switches the
/// shared layer code needs. Each file in `Architectures/` builds one of these.
public struct ArchitectureDescription: Sendable {
    /// q/k normalisation style.
    public var qkNormalization: QKNormalization
    /// Prefix of the feed-forward block of layer `l` (`model.layers.l.mlp` or `...block_sparse_moe`).
    public var feedForwardPrefix: @Sendable (Int) -> String
    /// The router's weight, `[experts, hidden]`.
    public var routerName: @Sendable (Int) -> String
    /// Tensor names of routed expert `e` in layer `l`.
    public var expertTensorNames: @Sendable (Int, Int) -> ExpertTensorNames
    /// Whether MoE layers carry a sigmoid-gated shared expert (Qwen2-MoE).
    public var hasSharedExpert: Bool

    /// Attention tensors of layer `l`: `model.layers.l.self_attn.<name>`.
    public func attentionPrefix(_ layer: Int) -> String { "model.layers.\(layer).self_attn" }

    /// The description for `architecture`.
    public static func of(_ architecture: Architecture) -> ArchitectureDescription {
        switch architecture {
        case .mixtral: return Mixtral.description
        case .qwen2Moe: return Qwen2Moe.description
        case .qwen3Moe: return Qwen3Moe.description
        case .olmoe: return Olmoe.description
        }
    }
}

/// Expert names in the `mlp.experts.E.{gate,up,down}_proj` style that Qwen and OLMoE use.
func projectionStyleExpertNames(layer: Int, expert: Int) -> ExpertTensorNames {
    let prefix = "model.layers.\(layer).mlp.experts.\(expert)"
    return ExpertTensorNames(gate: "\(prefix).gate_proj.weight", up: "\(prefix).up_proj.weight", down: "\(prefix).down_proj.weight")
}
