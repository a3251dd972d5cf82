/// Reads a routed expert whole (its three matrices and their biases, if any), for the sources
/// whose experts cannot be fetched tensor by tensor under the architecture's names: fused
/// checkpoints (`FusedExpertReader`, gpt-oss) and GGUF files (`GGUFModel.expert`: stacked
/// `ffn_*_exps` slices, with gpt-oss's `.bias` slices).
public protocol WholeExpertReader: Sendable {
    /// Expert `expert` of MoE layer `layer`, in matrices and biases that own their memory.
    func expert(layer: Int, expert: Int) throws -> ExpertWeights
}

extension FusedExpertReader: WholeExpertReader {}
extension GGUFModel: WholeExpertReader {}

/// The whole-expert reader `weights` needs, nil when its experts are separate named tensors.
public enum WholeExpertReaders {
    /// A GGUF file reads its own experts; a fused checkpoint goes through `FusedExpertReader.of`.
    public static func of(_ weights: WeightSource, description: ArchitectureDescription) throws -> (any WholeExpertReader)? {
        if let gguf = weights as? GGUFModel { return gguf }
        return try FusedExpertReader.of(weights, description: description)
    }
}
