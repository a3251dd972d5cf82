import ModelFormats

/// Holds every routed expert in RAM, loaded once from a checkpoint: the simple provider for
/// models that fit.
public final class InMemoryExpertProvider: ExpertProvider, @unchecked Sendable {
    /// `experts[layer][expert]`; nil entries for dense layers.
    private let experts: [[ExpertWeights]?]

    /// Loads every expert of every MoE layer of `config` from `weights`, using `names` to find
    /// the tensors.
    public init(config: ModelConfig, weights: WeightSource, names: ArchitectureDescription) throws {
        let hidden = config.hiddenSize, width = config.expertIntermediateSize
        let fused = try WholeExpertReaders.of(weights, description: names)
        var loaded: [[ExpertWeights]?] = []
        for layer in 0..<config.layerCount {
            guard config.isMoELayer(layer) else { loaded.append(nil); continue }
            loaded.append(try (0..<config.expertCount).map { expert in
                if let fused { return try fused.expert(layer: layer, expert: expert) }
                let tensorNames = names.expertTensorNames(layer, expert)
                return ExpertWeights(
                    gate: try weights.matrix(tensorNames.gate, rows: width, cols: hidden),
                    up: try weights.matrix(tensorNames.up, rows: width, cols: hidden),
                    down: try weights.matrix(tensorNames.down, rows: hidden, cols: width))
            })
        }
        experts = loaded
    }

    public func withExperts(layer: Int, experts requested: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        guard let layerExperts = experts[layer] else { preconditionFailure("layer \(layer) has no routed experts") }
        for expert in requested { try body(expert, layerExperts[expert]) }
    }
}
