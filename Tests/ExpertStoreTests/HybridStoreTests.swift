import Foundation
import Testing
import ModelFormats
import MoEModels

/// A Qwen3-Next checkpoint packed into an expert store (its delta-net tensors, 3-D conv kernel
/// included, go to dense.bin; its experts to blobs) gives the checkpoint's logits bit for bit.
@Suite struct HybridStoreTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/models")

    static var fixtures: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []).filter { $0.hasPrefix("qwen3next") }.sorted()
    }

    @Test(arguments: fixtures)
    func packedStoreGivesTheCheckpointsLogits(name: String) throws {
        let checkpoint = Self.root.appendingPathComponent(name)
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let storeURL = dir.appendingPathComponent("store")
        try pack(checkpoint, to: storeURL)
        let store = try ExpertStore(url: storeURL)
        #expect(store.verify().isEmpty)
        #expect(store.manifest.dense.tensors.contains { $0.name.hasSuffix("linear_attn.conv1d.weight") })
        let expected = try logits(ModelLoader.loadCheckpoint(at: checkpoint))
        let actual = try logits(ModelLoader.load(at: storeURL))
        #expect(expected.map(\.bitPattern) == actual.map(\.bitPattern))
    }

    /// The published checkpoints carry a multi-token-prediction head (`mtp.*`, experts included)
    /// that neither transformers nor MoEServe runs: a checkpoint with one packs without it, with
    /// the same logits.
    @Test func theMultiTokenPredictionHeadIsLeftOut() throws {
        let source = Self.root.appendingPathComponent("qwen3next-linear-heavy-tied")
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let checkpoint = dir.appendingPathComponent("hf")
        try FileManager.default.createDirectory(at: checkpoint, withIntermediateDirectories: true)
        for name in try FileManager.default.contentsOfDirectory(atPath: source.path) {
            try FileManager.default.copyItem(at: source.appendingPathComponent(name), to: checkpoint.appendingPathComponent(name))
        }
        var extra = SafetensorsWriter()
        let mtpNames = ["mtp.fc.weight", "mtp.layers.0.mlp.experts.0.gate_proj.weight"]
        for name in mtpNames { extra.add(name, shape: [4, 48], values: [Float](repeating: 0.5, count: 192), dtype: .bf16) }
        try extra.write(to: checkpoint.appendingPathComponent("model-mtp.safetensors"))
        let indexURL = checkpoint.appendingPathComponent("model.safetensors.index.json")
        var index = try JSONSerialization.jsonObject(with: Data(contentsOf: indexURL)) as! [String: Any]
        var map = index["weight_map"] as! [String: String]
        for name in mtpNames { map[name] = "model-mtp.safetensors" }
        index["weight_map"] = map
        try JSONSerialization.data(withJSONObject: index).write(to: indexURL)

        #expect(try CheckpointDirectory(url: checkpoint).contains("mtp.fc.weight"))
        let storeURL = dir.appendingPathComponent("store")
        try pack(checkpoint, to: storeURL)
        let store = try ExpertStore(url: storeURL)
        #expect(!store.manifest.dense.tensors.contains { $0.name.hasPrefix("mtp.") })
        let expected = try logits(ModelLoader.loadCheckpoint(at: source))
        #expect(try logits(ModelLoader.load(at: storeURL)).map(\.bitPattern) == expected.map(\.bitPattern))
    }
}
