import Foundation
import Testing
import ModelFormats
import TensorMath
@testable import MoEModels

/// The forward workspace: sized once, counted exactly, and no buffer made by a decode step.
@Suite struct ForwardWorkspaceTests {
    /// Every architecture's fixtures (dense layers, shared experts, q/k norms, clipping):
    /// after a reservation, prefill and decode steps within it make no `AlignedBuffer`, one
    /// sequence alone or two batched, and the workspace holds exactly what
    /// `TransformerModel.workspaceBytes` reports to the memory plan. Synchronous on purpose:
    /// the allocation count is per thread, and the in-RAM provider runs experts on the caller.
    @Test(arguments: ReferenceFixture.committed)
    func decodeStepsAllocateNothing(fixture: ReferenceFixture) throws {
        let reference = try fixture.reference()
        let model = try ModelLoader.loadCheckpoint(at: fixture.directory)
        let prompt = Array(reference.prompt.prefix(4))
        let steps = 8
        model.reserveWorkspace(maxRows: 2 * prompt.count, maxSequences: 2)
        #expect(model.workspaceByteCount == TransformerModel.workspaceBytes(config: model.config, maxRows: 2 * prompt.count,
                                                                             maxSequences: 2))
        // KV caches grow by doubling: that is the sequence's memory, not the step's, so it is
        // reserved here for the whole run.
        let caches = (0..<2).map { _ in model.makeCache() }
        for cache in caches { cache.reserve(prompt.count + 2 * steps) }

        let before = BufferAllocations.onCurrentThread
        var logits = try model.forward(caches.map { SequenceInput(cache: $0, tokens: prompt) })
        for _ in 0..<steps {
            let next = logits.map { row in row.indices.max { row[$0] < row[$1] }! }
            logits = try model.forward(zip(caches, next).map { SequenceInput(cache: $0, tokens: [$1]) })
        }
        for _ in 0..<steps {
            let row = logits[0]
            logits = try model.forward([SequenceInput(cache: caches[0], tokens: [row.indices.max { row[$0] < row[$1] }!])])
        }
        #expect(BufferAllocations.onCurrentThread - before == 0)
        #expect(caches[0].length == prompt.count + 2 * steps && caches[1].length == prompt.count + steps)
    }

    /// Without a reservation the first step sizes the workspace and a larger step grows it;
    /// the same step shape afterwards reuses it.
    @Test func workspaceGrowsToTheLargestStepAndIsReused() throws {
        let fixture = try #require(ReferenceFixture.committed.first)
        let model = try ModelLoader.loadCheckpoint(at: fixture.directory)
        #expect(model.workspaceByteCount == 0)
        _ = try model.forward([SequenceInput(cache: model.makeCache(), tokens: [1])])
        let one = TransformerModel.workspaceBytes(config: model.config, maxRows: 1, maxSequences: 1)
        #expect(model.workspaceByteCount == one)
        _ = try model.forward([SequenceInput(cache: model.makeCache(), tokens: [1, 2, 3])])
        #expect(model.workspaceByteCount == TransformerModel.workspaceBytes(config: model.config, maxRows: 3, maxSequences: 1))
        #expect(model.workspaceByteCount > one)
        let cache = model.makeCache()
        let before = BufferAllocations.onCurrentThread
        _ = try model.forward([SequenceInput(cache: cache, tokens: [1, 2])])
        _ = try model.forward([SequenceInput(cache: cache, tokens: [3])])
        #expect(BufferAllocations.onCurrentThread - before == 0)
    }
}
