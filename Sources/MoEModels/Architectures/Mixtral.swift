/// Mixtral (`MixtralForCausalLM`): Llama attention with grouped-query heads and no biases, an
/// optional sliding window, and a `block_sparse_moe` block whose experts are `w1` (gate),
/// `w3` (up) and `w2` (down). Routing: softmax over all experts, top-k, renormalised.
enum Mixtral {
    static let description = ArchitectureDescription(
        qkNormalization: .none,
        feedForwardPrefix: { "model.layers.\($0).block_sparse_moe" },
        routerName: { "model.layers.\($0).block_sparse_moe.gate.weight" },
        expertTensorNames: { layer, expert in
            let prefix = "model.layers.\(layer).block_sparse_moe.experts.\(expert)"
            return ExpertTensorNames(gate: "\(prefix).w1.weight", up: "\(prefix).w3.weight", down: "\(prefix).w2.weight")
        },
        hasSharedExpert: false
    )
}
