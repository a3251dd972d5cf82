/// Qwen3-MoE (`Qwen3MoeForCausalLM`): attention without biases and with a per-head RMSNorm on
/// q and k (over `head_dim`, which need not be hidden/heads) before RoPE; MoE placement and
/// routing as Qwen2-MoE, without a shared expert.
enum Qwen3Moe {
    static let description = ArchitectureDescription(
        qkNormalization: .perHead,
        feedForwardPrefix: { "model.layers.\($0).mlp" },
        routerName: { "model.layers.\($0).mlp.gate.weight" },
        expertTensorNames: projectionStyleExpertNames,
        hasSharedExpert: false
    )
}
