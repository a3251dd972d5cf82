import Foundation
import Testing
import ModelFormats
import MoEModels

/// Packed stores of the DeepSeek-family fixtures (MLA, sigmoid routing with its F32 correction
/// bias, shared experts, dense first layers) give the checkpoint's logits.
@Suite struct DeepseekFamilyStoreTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/models")
    static let fixtures = ["deepseekv3-qlora-groups-yarn", "deepseekv3-noqlora-2shared-tied", "deepseekv2-lite-yarn",
                           "deepseekv2-qlora-grouped", "glm4moe-partial-qknorm-bias", "glm4moe-groups-tied",
                           "minimaxm2-rotarydim", "minimaxm2-fullrotary-tied"]

    @Test(arguments: fixtures)
    func bf16StoreMatchesTheCheckpointBitForBit(name: String) throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let checkpoint = Self.root.appendingPathComponent(name)
        let storeURL = dir.appendingPathComponent("store")
        try pack(checkpoint, to: storeURL, dtype: .bf16, codec: .lz4)
        let store = try ExpertStore(url: storeURL)
        #expect(store.verify().isEmpty)
        let expected = try logits(ModelLoader.loadCheckpoint(at: checkpoint))
        let actual = try logits(ModelLoader.load(at: storeURL))
        #expect(expected.map(\.bitPattern) == actual.map(\.bitPattern))
    }

    /// int8 experts (q4 needs expert widths that are multiples of 32; these fixtures' are 12-24).
    @Test(arguments: [ExpertDType.int8])
    func quantisedStoreStaysClose(dtype: ExpertDType) throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let checkpoint = Self.root.appendingPathComponent("deepseekv3-qlora-groups-yarn")
        let storeURL = dir.appendingPathComponent("store")
        try pack(checkpoint, to: storeURL, dtype: dtype)
        let expected = try logits(ModelLoader.loadCheckpoint(at: checkpoint))
        let actual = try logits(ModelLoader.load(at: storeURL))
        let rms = { (v: [Float]) in (v.reduce(0) { $0 + $1 * $1 } / Float(v.count)).squareRoot() }
        let relative = rms(zip(expected, actual).map { $0 - $1 }) / rms(expected)
        #expect(relative < (dtype == .int8 ? 0.01 : 0.1), "relative logit RMS error \(relative)")
    }
}
