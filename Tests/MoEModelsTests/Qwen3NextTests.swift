import Foundation
import Testing
import InferenceEngine
import ModelFormats
import TensorMath
@testable import MoEModels

/// Qwen3-Next's hybrid layers beyond the generic fidelity tests (which compare every prompt
/// position and the greedy continuation with transformers on the `qwen3next-*` fixtures, whose
/// prompts span two chunks of the chunked delta rule): the chunked prefill split anywhere and
/// the recurrent form agree, sequences batched in a step equal each alone, and a sequence's
/// cache holds the linear layers' state instead of their keys and values.
@Suite struct Qwen3NextTests {
    static let fixtures = ReferenceFixture.committed.filter { $0.directory.lastPathComponent.hasPrefix("qwen3next") }

    @Test func thereAreSeveralQwen3NextFixturesWithPromptsLongerThanOneChunk() throws {
        #expect(Self.fixtures.count >= 3)
        for fixture in Self.fixtures {
            let reference = try fixture.reference()
            #expect(reference.prompt.count > GatedDeltaNet.chunkSize)
            let config = try ModelLoader.loadCheckpoint(at: fixture.directory).config
            let linear = try #require(config.linearAttention)
            #expect(!linear.layers.isEmpty && linear.layers.count < config.layerCount)
        }
    }

    /// The prompt run in pieces (as the scheduler's prefill chunks cut it, the cut inside or on
    /// a 64-token chunk) and token by token (the recurrent form throughout) gives the logits of
    /// the prompt run in one step, position by position.
    @Test(arguments: fixtures)
    func prefillSplitAnywhereAndTokenByTokenEqualOneStep(fixture: ReferenceFixture) throws {
        let reference = try fixture.reference()
        let model = try ModelLoader.loadCheckpoint(at: fixture.directory)
        let prompt = reference.prompt
        let vocab = model.config.vocabSize
        let whole = try model.forward([SequenceInput(cache: model.makeCache(), tokens: prompt, allLogits: true)])[0]
        for cuts in [[37], [64], [1, 65], [7, 14, 21, 63, 66]] {
            let cache = model.makeCache()
            var pieces: [Float] = []
            var start = 0
            for end in cuts + [prompt.count] {
                pieces += try model.forward([SequenceInput(cache: cache, tokens: Array(prompt[start..<end]), allLogits: true)])[0]
                start = end
            }
            #expect(maxAbsDifference(pieces, whole) <= 1e-4, "cuts \(cuts)")
        }
        let cache = model.makeCache()
        var stepwise: [Float] = []
        for token in prompt { stepwise += try model.forward([SequenceInput(cache: cache, tokens: [token])])[0] }
        #expect(stepwise.count == prompt.count * vocab)
        #expect(maxAbsDifference(stepwise, whole) <= 1e-4)
        #expect(cache.length == prompt.count)
    }

    /// Three sequences in one step (a long prompt, a short one, a single token), then decode
    /// steps together: each sequence's logits are those it gets alone.
    @Test(arguments: fixtures)
    func sequencesBatchedInOneStepMatchEachAlone(fixture: ReferenceFixture) throws {
        let reference = try fixture.reference()
        let model = try ModelLoader.loadCheckpoint(at: fixture.directory)
        let prompts = [reference.prompt, Array(reference.prompt.reversed().prefix(30)), [reference.prompt[3]]]
        func run(_ group: [Int]) throws -> [[Float]] {
            let caches = group.map { _ in model.makeCache() }
            var outputs = try model.forward(zip(caches, group).map { SequenceInput(cache: $0, tokens: prompts[$1]) })
            var all = outputs
            for step in 0..<3 {
                outputs = try model.forward(zip(caches, outputs).map { cache, logits in
                    SequenceInput(cache: cache, tokens: [(Ops.argmax(logits, count: logits.count) + step) % model.config.vocabSize])
                })
                for (i, row) in outputs.enumerated() { all[i] += row }
            }
            return all
        }
        let together = try run([0, 1, 2])
        for i in 0..<3 {
            let alone = try run([i])[0]
            #expect(maxAbsDifference(alone, together[i]) <= 1e-5, "sequence \(i)")
        }
    }

    /// Linear-attention layers keep no keys or values: the KV cost per position counts the
    /// full-attention layers only, and each cache carries the fixed-size recurrent and conv
    /// state (zero until the sequence runs) that the scheduler and memory plan count.
    @Test func cachesHoldLinearStateInsteadOfKeysAndValues() throws {
        let fixture = try #require(Self.fixtures.first)
        let model = try ModelLoader.loadCheckpoint(at: fixture.directory)
        let config = model.config
        let linear = try #require(config.linearAttention)
        #expect(config.kvLayerCount == config.layerCount - linear.layers.count)
        #expect(model.kvBytesPerToken == config.kvLayerCount * 2 * config.kvHeadCount * config.headDim * 4)
        let perSequence = linear.layers.count * (linear.valueHeadCount * linear.keyHeadDim * linear.valueHeadDim
                                                 + (linear.convKernel - 1) * linear.convChannels) * 4
        #expect(model.sequenceStateBytes == perSequence)

        let cache = model.makeCache()
        let state = try #require(cache.linearState)
        #expect(state.byteCount == perSequence)
        #expect(cache.byteCount == cache.capacity * model.kvBytesPerToken + perSequence)
        let layer = linear.layers[0]
        let recurrentCount = linear.recurrentStateCount
        #expect(UnsafeBufferPointer(start: state.recurrentState(layer: layer), count: recurrentCount).allSatisfy { $0 == 0 })
        _ = try model.forward([SequenceInput(cache: cache, tokens: [1, 2, 3])])
        #expect(UnsafeBufferPointer(start: state.recurrentState(layer: layer), count: recurrentCount).contains { $0 != 0 })
        #expect(UnsafeBufferPointer(start: state.convState(layer: layer), count: linear.convStateCount).contains { $0 != 0 })
        #expect(!cache.supportsTruncation && model.makeCache().linearState !== state)
        // Growing the cache grows only the full-attention layers' rows.
        cache.reserve(200)
        #expect(cache.byteCount == cache.capacity * model.kvBytesPerToken + perSequence)
    }

    /// A model without linear layers makes caches without linear state, as before.
    @Test func otherArchitecturesKeepPlainCaches() throws {
        // A plain grouped-query attention model (not latent attention, not sliding windows).
        let other = try #require(ReferenceFixture.committed.first { $0.directory.lastPathComponent.hasPrefix("qwen3moe") })
        let model = try ModelLoader.loadCheckpoint(at: other.directory)
        #expect(model.makeCache().linearState == nil && model.makeCache().supportsTruncation && model.sequenceStateBytes == 0)
        #expect(model.kvBytesPerToken == model.config.layerCount * 2 * model.config.kvHeadCount * model.config.headDim * 4)
    }
}
