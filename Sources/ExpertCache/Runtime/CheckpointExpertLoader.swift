import ModelFormats
import TensorMath

/// Loads experts from a Hugging Face checkpoint (any `WeightSource`) into memory the returned
/// weights own. A stand-in until the packed expert store's O_DIRECT reader is plugged in: the
/// checkpoint's bytes may come from the page cache, so it exercises the cache's logic and
/// statistics, not real disk reads.
public final class CheckpointExpertLoader: ExpertLoader, @unchecked Sendable {
    private let config: ModelConfig
    private let weights: WeightSource
    private let names: ArchitectureDescription
    private let bytesPerExpert: Int
    /// Reads experts stored fused per layer (gpt-oss) or in a GGUF file; nil when each has tensors of its own.
    private let fused: (any WholeExpertReader)?

    /// Serves the experts of `config`'s MoE layers from `weights`, found through `names`.
    public init(config: ModelConfig, weights: WeightSource, names: ArchitectureDescription) throws {
        self.config = config
        self.weights = weights
        self.names = names
        guard let layer = config.moeLayers.first else {
            throw ExpertCacheError("the model has no routed-expert layers to cache")
        }
        fused = try WholeExpertReaders.of(weights, description: names)
        if let fused {
            bytesPerExpert = try fused.expert(layer: layer, expert: 0).byteCount
            return
        }
        let tensorNames = names.expertTensorNames(layer, 0)
        let hidden = config.hiddenSize, width = config.expertIntermediateSize
        bytesPerExpert = try weights.matrix(tensorNames.gate, rows: width, cols: hidden).byteCount
            + weights.matrix(tensorNames.up, rows: width, cols: hidden).byteCount
            + weights.matrix(tensorNames.down, rows: hidden, cols: width).byteCount
    }

    public func expertByteCount(layer: Int, expert: Int) -> Int { bytesPerExpert }

    /// `CheckpointDirectory.matrix` copies each tensor into its own aligned buffer, so the
    /// returned weights own their memory and evicting them frees it; no further copy is made.
    public func loadExpert(layer: Int, expert: Int) throws -> ExpertWeights {
        if let fused { return try fused.expert(layer: layer, expert: expert) }
        let tensorNames = names.expertTensorNames(layer, expert)
        let hidden = config.hiddenSize, width = config.expertIntermediateSize
        return ExpertWeights(
            gate: try weights.matrix(tensorNames.gate, rows: width, cols: hidden),
            up: try weights.matrix(tensorNames.up, rows: width, cols: hidden),
            down: try weights.matrix(tensorNames.down, rows: hidden, cols: width))
    }
}
