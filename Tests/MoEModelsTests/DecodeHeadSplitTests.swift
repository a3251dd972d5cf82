import Foundation
import Testing
@testable import MoEModels

/// A decode row's attention heads split over the core pair (`AttentionLayer.decodeHeadSplitKeys`)
/// give the bits of the same heads run on one thread, on every committed architecture fixture
/// (sliding windows and sinks included) and with both KV cache precisions.
@Suite(.serialized) struct DecodeHeadSplitTests {
    /// Logits of `steps` decode steps after `prompt`, with decode rows split from `splitKeys` keys on.
    static func decodeLogits(_ fixture: ReferenceFixture, precision: KVPrecision, splitKeys: Int, steps: Int) throws -> [[Float]] {
        let saved = AttentionLayer.decodeHeadSplitKeys
        AttentionLayer.decodeHeadSplitKeys = splitKeys
        defer { AttentionLayer.decodeHeadSplitKeys = saved }
        let reference = try fixture.reference()
        let model = try ModelLoader.loadCheckpoint(at: fixture.directory)
        model.kvPrecision = precision
        let cache = model.makeCache()
        _ = try model.forward([SequenceInput(cache: cache, tokens: reference.prompt)])
        return try (0..<steps).map { step in
            try model.forward([SequenceInput(cache: cache, tokens: [reference.greedy[step % reference.greedy.count]])])[0]
        }
    }

    @Test(arguments: ReferenceFixture.committed)
    func splitHeadsGiveTheOneThreadBits(fixture: ReferenceFixture) throws {
        for precision in [KVPrecision.f32, .f16] {
            let oneThread = try Self.decodeLogits(fixture, precision: precision, splitKeys: .max, steps: 3)
            let split = try Self.decodeLogits(fixture, precision: precision, splitKeys: 1, steps: 3)
            #expect(oneThread.allSatisfy { !$0.contains { $0.isNaN } })
            for (step, (a, b)) in zip(oneThread, split).enumerated() {
                #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "\(fixture) \(precision) step \(step)")
            }
        }
    }
}
