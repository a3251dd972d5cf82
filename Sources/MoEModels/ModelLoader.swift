import Foundation
import ModelFormats

/// Opens a model directory with every routed expert in RAM.
public enum ModelLoader {
    /// Loads a Hugging Face checkpoint directory at `url` with an in-memory expert provider.
    public static func loadCheckpoint(at url: URL) throws -> TransformerModel {
        let checkpoint = try CheckpointDirectory(url: url)
        let description = ArchitectureDescription.of(checkpoint.config.architecture)
        let experts = try InMemoryExpertProvider(config: checkpoint.config, weights: checkpoint, names: description)
        return try TransformerModel(config: checkpoint.config, weights: checkpoint, experts: experts)
    }
}
