import Foundation
import Testing
import InferenceEngine
import ModelFormats
import TensorMath
@testable import MoEModels

/// A tiny checkpoint made by `scripts/make_reference_models.py` with Hugging Face
/// `transformers`, with its reference logits and greedy continuation.
struct ReferenceFixture: CustomTestStringConvertible, Sendable {
    let directory: URL
    var testDescription: String { directory.lastPathComponent }

    struct Reference: Decodable {
        let architecture: String
        let prompt: [Int]
        let logits: [[Float]]
        let greedy: [Int]
    }

    func reference() throws -> Reference {
        try JSONDecoder().decode(Reference.self, from: Data(contentsOf: directory.appendingPathComponent("reference.json")))
    }

    /// Every checkpoint directory holding a reference.json under `root`.
    static func all(in root: URL) -> [ReferenceFixture] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        return names.sorted().map { root.appendingPathComponent($0) }
            .filter { FileManager.default.fileExists(atPath: $0.appendingPathComponent("reference.json").path) }
            .map(ReferenceFixture.init)
    }

    static let committedRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/models")
    static let committed = all(in: committedRoot)
    /// Checkpoints the tests have never seen: `MOE_UNSEEN_MODELS=DIR` (made with
    /// `scripts/make_reference_models.py --out DIR --seed N --variant`).
    static let unseen: [ReferenceFixture] = ProcessInfo.processInfo.environment["MOE_UNSEEN_MODELS"]
        .map { all(in: URL(fileURLWithPath: $0)) } ?? []
}

/// Largest absolute difference between two equally long arrays.
func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
    zip(a, b).map { abs($0 - $1) }.max() ?? 0
}

/// RMS of `a − b` relative to the RMS of `b`.
private func relativeRMS(_ a: [Float], _ b: [Float]) -> Float {
    let rms = { (v: [Float]) in (v.reduce(0) { $0 + $1 * $1 } / Float(v.count)).squareRoot() }
    return rms(zip(a, b).map { $0 - $1 }) / rms(b)
}

@Suite struct FidelityTests {
    @Test func fixturesArePresent() {
        #expect(ReferenceFixture.committed.count >= 8, "expected the committed reference checkpoints in \(ReferenceFixture.committedRoot.path)")
        let architectures = Set(ReferenceFixture.committed.compactMap { try? $0.reference().architecture })
        #expect(architectures == Set(Architecture.allCases.map(\.rawValue)))
    }

    @Test(arguments: ReferenceFixture.committed + ReferenceFixture.unseen)
    func logitsAtEveryPositionMatchTransformers(fixture: ReferenceFixture) throws {
        let reference = try fixture.reference()
        let model = try ModelLoader.loadCheckpoint(at: fixture.directory)
        #expect(model.config.architecture.rawValue == reference.architecture)
        let logits = try model.forward([SequenceInput(cache: model.makeCache(), tokens: reference.prompt, allLogits: true)])[0]
        let vocab = model.config.vocabSize
        #expect(logits.count == reference.logits.count * vocab)
        var worst: Float = 0
        for (position, expected) in reference.logits.enumerated() {
            worst = max(worst, maxAbsDifference(Array(logits[position * vocab..<(position + 1) * vocab]), expected))
        }
        if fixture.directory.lastPathComponent == "gptoss-mxfp4" && IntegerDotKernels.level != nil {
            // MXFP4 experts through the integer-dot kernel: activations rounded to 8-bit blocks.
            // Measured 0.110 relative RMS (max |Δlogit| 2.07) where the float kernel is within 1e-3;
            // the same prompts' greedy tokens are unchanged (greedyContinuationMatchesTransformers).
            // Verified position by position (scripts/gptoss_mxfp4_rounding.py, docs/BENCHMARKS.md): the
            // figure equals PyTorch with the experts' inputs and SwiGLU outputs rounded to 8-bit blocks
            // (0.1096 both); one top-2 routing flips (layer 1 token 10, router margin 0.004), that position
            // carries 0.483 and the other 19 stay at 0.010-0.034. 16-bit activations would give 0.0001.
            let relative = relativeRMS(logits, reference.logits.flatMap { $0 })
            print("gptoss-mxfp4 integer-dot vs transformers: relative logit RMS \(relative), max |Δlogit| \(worst)")
            #expect(relative < 0.15, "relative logit RMS \(relative)")
        } else {
            #expect(worst <= 1e-3, "max |Δlogit| = \(worst)")
        }
    }

    @Test(arguments: ReferenceFixture.committed + ReferenceFixture.unseen)
    func greedyContinuationMatchesTransformers(fixture: ReferenceFixture) throws {
        let reference = try fixture.reference()
        let model = try ModelLoader.loadCheckpoint(at: fixture.directory)
        let generator = Generator(model: model)
        let result = try generator.generate(prompt: reference.prompt, maxTokens: reference.greedy.count, stopTokens: [])
        #expect(result.tokens == reference.greedy)
    }

    /// The runtime's default float16 KV cache against Hugging Face: the logits move by the
    /// rounding of keys and values only, and greedy decoding is unchanged on every fixture.
    @Test(arguments: ReferenceFixture.committed)
    func float16KVCacheStaysCloseToTransformers(fixture: ReferenceFixture) throws {
        let reference = try fixture.reference()
        let model = try ModelLoader.loadCheckpoint(at: fixture.directory)
        model.kvPrecision = .f16
        let logits = try model.forward([SequenceInput(cache: model.makeCache(), tokens: reference.prompt, allLogits: true)])[0]
        let vocab = model.config.vocabSize
        var worst: Float = 0
        for (position, expected) in reference.logits.enumerated() {
            worst = max(worst, maxAbsDifference(Array(logits[position * vocab..<(position + 1) * vocab]), expected))
        }
        if fixture.directory.lastPathComponent == "gptoss-mxfp4" && IntegerDotKernels.level != nil {
            let relative = relativeRMS(logits, reference.logits.flatMap { $0 })
            print("gptoss-mxfp4 integer-dot, f16 KV vs transformers: relative logit RMS \(relative), max |Δlogit| \(worst)")
            #expect(relative < 0.15, "relative logit RMS \(relative)")
        } else {
            #expect(worst <= 1e-2, "max |Δlogit| = \(worst)")
        }
        let generator = Generator(model: model)
        let result = try generator.generate(prompt: reference.prompt, maxTokens: reference.greedy.count, stopTokens: [])
        #expect(result.tokens == reference.greedy)
    }

    @Test(arguments: ReferenceFixture.committed.prefix(4))
    func tokenByTokenDecodingEqualsOneStepPrefill(fixture: ReferenceFixture) throws {
        let reference = try fixture.reference()
        let model = try ModelLoader.loadCheckpoint(at: fixture.directory)
        let cache = model.makeCache()
        var last: [Float] = []
        for token in reference.prompt {
            last = try model.forward([SequenceInput(cache: cache, tokens: [token])])[0]
        }
        let whole = try model.forward([SequenceInput(cache: model.makeCache(), tokens: reference.prompt)])[0]
        #expect(maxAbsDifference(last, whole) <= 1e-4)
        #expect(cache.length == reference.prompt.count)
    }

    @Test func sequencesBatchedInOneStepMatchEachAlone() throws {
        let fixtures = Array(ReferenceFixture.committed.prefix(2))
        for fixture in fixtures {
            let reference = try fixture.reference()
            let model = try ModelLoader.loadCheckpoint(at: fixture.directory)
            let promptA = reference.prompt, promptB = Array(reference.prompt.reversed().prefix(5))
            let alone = [try model.forward([SequenceInput(cache: model.makeCache(), tokens: promptA)])[0],
                         try model.forward([SequenceInput(cache: model.makeCache(), tokens: promptB)])[0]]
            let together = try model.forward([SequenceInput(cache: model.makeCache(), tokens: promptA),
                                              SequenceInput(cache: model.makeCache(), tokens: promptB)])
            #expect(maxAbsDifference(alone[0], together[0]) <= 1e-4)
            #expect(maxAbsDifference(alone[1], together[1]) <= 1e-4)
        }
    }
}
