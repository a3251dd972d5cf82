import Foundation
import Testing
import ModelFormats
@testable import MoEModels
import TensorMath

@Suite struct ExpertWideningTests {
    /// Zero units change no output: the widened store's logits match the original's (up to
    /// summation order in the wider products) and its experts are larger by width / w. At 86x
    /// (2,752 units, 528 K weights per expert) one token's experts take the worker path with
    /// slot-ordered sums (`SparseMoEBlock.parallelSingleRowWeights`), checked here against the
    /// direct one; the threads themselves are tested in BatchedForwardTests.
    @Test(arguments: [(TinyCheckpoint.Kind.mixtral, ExpertDType.bf16, 3), (.qwen2Moe, .q4, 3), (.mixtral, .q4, 3), (.qwen2Moe, .int8, 3),
                      (.mixtral, .q4, 86)])
    func widenedStoreKeepsTheModelsOutputs(kind: TinyCheckpoint.Kind, dtype: ExpertDType, factor: Int) throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(kind, dtype: .bf16, in: dir)
        let original = dir.appendingPathComponent("store")
        try pack(hf, to: original, dtype: dtype)
        let width = TinyCheckpoint.expertWidth * factor

        #expect((3 * TinyCheckpoint.hidden * width >= SparseMoEBlock.parallelSingleRowWeights) == (factor == 86))

        let widenedCheckpoint = dir.appendingPathComponent("widened-hf")
        try ExpertWidening.writeCheckpoint(of: ExpertStore(url: original), width: width, to: widenedCheckpoint)
        let widened = dir.appendingPathComponent("widened")
        try pack(widenedCheckpoint, to: widened, dtype: dtype)

        let store = try ExpertStore(url: widened)
        #expect(store.config.expertIntermediateSize == width)
        #expect(store.layout.gate.rows == width && store.layout.down.cols == width)
        #expect(store.verify().isEmpty)
        let originalStore = try ExpertStore(url: original)
        #expect(store.manifest.experts.fileSize > 2 * originalStore.manifest.experts.fileSize)

        let expected = try logits(ModelLoader.load(at: original))
        let actual = try logits(ModelLoader.load(at: widened))
        let scale = expected.map(abs).max()!
        let worst = zip(expected, actual).map { abs($0 - $1) }.max()!
        #expect(worst <= 1e-5 * scale, "max |Δlogit| \(worst) (logit scale \(scale))")
        // The last two rows are decode steps; the argmax (greedy token) must not move.
        let vocab = TinyCheckpoint.vocab
        for row in [expected.count / vocab - 2, expected.count / vocab - 1] {
            let e = expected[row * vocab..<(row + 1) * vocab], a = actual[row * vocab..<(row + 1) * vocab]
            #expect(e.firstIndex(of: e.max()!) == a.firstIndex(of: a.max()!))
        }
    }

    /// A model's predictor probes and expert surrogates travel with it: `pack` copies them from
    /// the checkpoint into the store (the other safetensors files are its weights), and widening —
    /// which changes no hidden state, routing or expert output — keeps them.
    @Test func predictorProbesAndSurrogatesTravelWithTheModel() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(.mixtral, dtype: .bf16, in: dir)
        let files = [ExpertStore.predictorProbesFile: Data("stand-in for fitted probes".utf8),
                     ExpertStore.expertSurrogatesFile: Data("stand-in for fitted surrogates".utf8)]
        for (name, data) in files { try data.write(to: hf.appendingPathComponent(name)) }
        let original = dir.appendingPathComponent("store")
        try pack(hf, to: original)
        let widenedCheckpoint = dir.appendingPathComponent("widened-hf")
        try ExpertWidening.writeCheckpoint(of: ExpertStore(url: original), width: 2 * TinyCheckpoint.expertWidth, to: widenedCheckpoint)
        let widened = dir.appendingPathComponent("widened")
        try pack(widenedCheckpoint, to: widened)
        for (name, data) in files {
            #expect(try Data(contentsOf: original.appendingPathComponent(name)) == data)
            #expect(try ExpertStore(url: original).manifest.copiedFiles.contains(name))
            #expect(try Data(contentsOf: widened.appendingPathComponent(name)) == data)
        }
    }

    @Test func narrowingIsRefused() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(.mixtral, dtype: .bf16, in: dir)
        let original = dir.appendingPathComponent("store")
        try pack(hf, to: original)
        let message = errorText {
            try ExpertWidening.writeCheckpoint(of: ExpertStore(url: original), width: TinyCheckpoint.expertWidth - 1,
                                              to: dir.appendingPathComponent("out"))
        }
        #expect(message?.contains("smaller than the model's") == true)
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("out").path))
    }
}
