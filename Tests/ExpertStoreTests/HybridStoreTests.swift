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
}
