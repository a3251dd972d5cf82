/// Qwen2-MoE (`Qwen2MoeForCausalLM`): attention with q/k/v biases; MoE layers every
/// `decoder_sparse_step` layers except `mlp_only_layers` (the rest have a dense MLP); routing
/// softmax → top-k → optional renormalisation (`norm_topk_prob`); plus a shared expert whose
/// output is scaled by `sigmoid(shared_expert_gate · x)`.
enum Qwen2Moe {
    static let description = ArchitectureDescription(
        qkNormalization: .none,
        feedForwardPrefix: { "model.layers.\($0).mlp" },
        routerName: { "model.layers.\($0).mlp.gate.weight" },
        expertTensorNames: projectionStyleExpertNames,
        hasSharedExpert: true
    )
}
