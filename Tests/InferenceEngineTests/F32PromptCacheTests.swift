import Foundation
import Testing
import ModelFormats
import MoEModels
import TensorMath
@testable import InferenceEngine

/// Partial prompt-cache hits on an f32 checkpoint (what f16 checkpoints become on load): its
/// products run `F32RowInvariantKernels`, whose per-row arithmetic does not depend on the number
/// of rows, so the engine's probe finds the prefill exact and a growing chat reuses the last turn
/// and equals a cold engine bit for bit (before, sgemv/sgemm kept such models to whole hits).
@Suite(.serialized) struct F32PromptCacheTests {
    /// `fixture`'s checkpoint with every tensor widened to f32, in one file under `directory`.
    static func widenedCopy(_ fixture: String, in directory: URL) throws -> URL {
        let source = Fixtures.named(fixture)
        let checkpoint = try CheckpointDirectory(url: source)
        var writer = SafetensorsWriter()
        for name in checkpoint.tensorNames {
            let (entry, file) = try checkpoint.entry(name)
            let raw = file.bytes(of: entry)
            let values: [Float]
            switch entry.dtype {
            case .bf16: values = (0..<entry.elementCount).map { FloatConversion.float(fromBF16: raw.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self)) }
            case .f32: values = (0..<entry.elementCount).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self) }
            default: throw ModelFormatError.file(name, "unexpected dtype \(entry.dtype) in the fixture")
            }
            writer.add(name, shape: entry.shape, values: values, dtype: .f32)
        }
        let target = directory.appendingPathComponent(fixture + "-f32")
        try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
        try writer.write(to: target.appendingPathComponent("model.safetensors"))
        try FileManager.default.copyItem(at: source.appendingPathComponent("config.json"), to: target.appendingPathComponent("config.json"))
        return target
    }

    static func engine(_ url: URL) throws -> Engine {
        let checkpoint = try CheckpointDirectory(url: url)
        let description = ArchitectureDescription.of(checkpoint.config.architecture)
        let experts = try InMemoryExpertProvider(config: checkpoint.config, weights: checkpoint, names: description)
        let model = try TransformerModel(config: checkpoint.config, weights: checkpoint, experts: experts)
        let engine = Engine(model: model, limits: Engine.defaultLimits(for: model, kvCacheBudgetBytes: 64 << 20), decode: toyDecode)
        engine.partialPromptReuse = .whenExact
        engine.start()
        return engine
    }

    @Test func aGrowingConversationOnF32WeightsReusesTheLastTurnBitForBit() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("f32-prompt-cache-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let url = try Self.widenedCopy("qwen2moe-shared", in: directory)
        // The widened copy really runs f32 products.
        let copy = try CheckpointDirectory(url: url)
        let qShape = try copy.entry("model.layers.0.self_attn.q_proj.weight").0.shape
        if case .f32 = try copy.matrix("model.layers.0.self_attn.q_proj.weight", rows: qShape[0], cols: qShape[1]).storage {} else {
            Issue.record("the copy's q_proj is not f32")
        }
        try QuantizedPromptCacheTests.expectGrowingConversationReusesTheLastTurn { try Self.engine(url) }
    }
}
