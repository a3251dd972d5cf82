/// OLMoE (`OlmoeForCausalLM`): attention with an RMSNorm over the whole q and k projections
/// (before splitting into heads) and, when `clip_qkv` is set, q, k and v clamped to ±clip_qkv;
/// every layer is MoE; routing softmax → top-k → optional renormalisation (`norm_topk_prob`,
/// off by default).
enum Olmoe {
    static let description = ArchitectureDescription(
        qkNormalization: .wholeProjection,
        feedForwardPrefix: { "model.layers.\($0).mlp" },
        routerName: { "model.layers.\($0).mlp.gate.weight" },
        expertTensorNames: projectionStyleExpertNames,
        hasSharedExpert: false
    )
}
