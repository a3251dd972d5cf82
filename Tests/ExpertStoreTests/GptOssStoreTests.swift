import Foundation
import Testing
import ModelFormats
import MoEModels
import TensorMath

/// gpt-oss checkpoints packed into stores: fused experts split into per-expert blobs with their
/// biases, MXFP4 kept 4-bit, and the logits of the checkpoint back from every store.
@Suite struct GptOssStoreTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/models")

    func packFused(_ name: String, dtype: ExpertDType, codec: ExpertCodec = .none, in dir: URL) throws -> URL {
        let checkpoint = try CheckpointDirectory(url: Self.fixtures.appendingPathComponent(name))
        let names = ArchitectureDescription.of(checkpoint.config.architecture)
        var packer = ExpertStorePacker()
        packer.dtype = dtype
        packer.codec = codec
        packer.fusedExperts = try FusedExpertReader.of(checkpoint, description: names)
        let store = dir.appendingPathComponent("\(name)-\(dtype.rawValue)-\(codec.rawValue)")
        try packer.pack(checkpoint: checkpoint, expertTensorNames: { _, _ in [] }, to: store)
        return store
    }

    /// A prompt longer than the window, then two decode steps.
    func logits(_ model: TransformerModel) throws -> [Float] {
        let cache = model.makeCache()
        let prompt = (0..<17).map { ($0 * 29 + 3) % model.config.vocabSize }
        var all = try model.forward([SequenceInput(cache: cache, tokens: prompt, allLogits: true)])[0]
        all += try model.forward([SequenceInput(cache: cache, tokens: [4])])[0]
        all += try model.forward([SequenceInput(cache: cache, tokens: [9])])[0]
        return all
    }

    /// Exact stores give the checkpoint's logits bit for bit: bf16 from bf16, MXFP4 from MXFP4
    /// (the blocks copied, with or without LZ4), and bf16 from MXFP4 (e2m1 × 2^k is exact in
    /// bf16) within float summation order of the other kernel.
    @Test(arguments: [("gptoss-sliding4-sinks", ExpertDType.bf16, ExpertCodec.none), ("gptoss-clamp-mqa-tied", .bf16, .lz4),
                      ("gptoss-mxfp4", .mxfp4, .none), ("gptoss-mxfp4", .mxfp4, .lz4), ("gptoss-mxfp4", .bf16, .none)])
    func exactStoresGiveTheCheckpointsLogits(name: String, dtype: ExpertDType, codec: ExpertCodec) throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let storeURL = try packFused(name, dtype: dtype, codec: codec, in: dir)
        let store = try ExpertStore(url: storeURL)
        #expect(store.verify().isEmpty)
        #expect(store.manifest.experts.biases == true)
        #expect(store.manifest.dense.tensors.allSatisfy { !$0.name.contains("mlp.experts.") })
        let expected = try logits(ModelLoader.loadCheckpoint(at: Self.fixtures.appendingPathComponent(name)))
        let actual = try logits(ModelLoader.load(at: storeURL))
        if dtype == .bf16 && name == "gptoss-mxfp4" && IntegerDotKernels.level != nil {
            // The checkpoint's MXFP4 experts run through the integer-dot kernel (activations in
            // 8-bit blocks), the bf16 store's through float kernels: the int8 stores' kind of error.
            let rms = { (v: [Float]) in (v.reduce(0) { $0 + $1 * $1 } / Float(v.count)).squareRoot() }
            let relative = rms(zip(expected, actual).map { $0 - $1 }) / rms(expected)
            print("gptoss-mxfp4 integer-dot vs bf16 store: relative logit RMS error \(relative), max \(maxAbsDifference(expected, actual))")
            #expect(relative < 0.05)
        } else if dtype == .bf16 && name == "gptoss-mxfp4" {
            #expect(maxAbsDifference(expected, actual) <= 1e-4)
        } else {
            #expect(expected.map(\.bitPattern) == actual.map(\.bitPattern))
        }
        if dtype == .mxfp4 {
            // 17 bytes per 32 weights, plus 64-byte aligned biases: about 4.25 bits a weight.
            let config = store.config
            let weights = 3 * config.hiddenSize * config.expertIntermediateSize
            #expect(store.layout.down.dataLength == MXFP4.byteCount(rows: config.hiddenSize, cols: config.expertIntermediateSize))
            #expect(store.layout.rawLength < weights * 2 / 3)
        }
    }

    /// Lossy stores. The clamp fixture meets the bound the other architectures' q4 stores meet
    /// (0.1; measured 0.064). The other two fixtures amplify any perturbation about 14x more than
    /// `TinyCheckpoint` (their weights, sinks and 20-token prompts were drawn for large logit
    /// margins): int8, which gives 0.0007 there, gives 0.010 here, so their q4 and MXFP4 bounds
    /// are scaled alike (measured 0.23-0.38). Bounds, not results: a wrong kernel or layout is
    /// off by orders of magnitude (an exact store of the same experts is bit-identical above).
    /// int8 through the integer-dot kernels (activations rounded to 8-bit blocks, issue 22)
    /// measures 0.090 here against 0.010 with `MOE_KERNELS=float`, while q4 does not move
    /// (0.2763 vs 0.2762). Not a kernel error: rounding the experts' inputs and their
    /// clamped-SwiGLU outputs to 8 bits flips two near-tie top-2 routings of this fixture (layer 1
    /// token 3, router-logit margin 0.021; layer 2 token 6, margin 0.026), and those two positions
    /// carry relative errors 0.33 and 0.21 while every other position stays at 0.011-0.027; q4's
    /// weight error flips the same two already. Reproduced in PyTorch with int8 weights and
    /// rounded activations (0.0905; either rounding alone 0.011 / 0.015; 16-bit activations 0.0101),
    /// see docs/BENCHMARKS.md (issue 22). So the bound holds the two flips, with margin.
    @Test(arguments: [("gptoss-clamp-mqa-tied", ExpertDType.q4, Float(0.1)), ("gptoss-sliding4-sinks", .q4, 0.4),
                      ("gptoss-mxfp4", .q4, 0.4), ("gptoss-sliding4-sinks", .int8, 0.12), ("gptoss-sliding4-sinks", .mxfp4, 0.5)])
    func quantizedStoresStayClose(name: String, dtype: ExpertDType, bound: Float) throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let storeURL = try packFused(name, dtype: dtype, in: dir)
        let expected = try logits(ModelLoader.loadCheckpoint(at: Self.fixtures.appendingPathComponent(name)))
        let actual = try logits(ModelLoader.load(at: storeURL))
        let rms = { (v: [Float]) in (v.reduce(0) { $0 + $1 * $1 } / Float(v.count)).squareRoot() }
        let relative = rms(zip(expected, actual).map { $0 - $1 }) / rms(expected)
        print("\(name) \(dtype) store: relative logit RMS error \(relative)")
        #expect(relative < bound, "relative logit RMS error \(relative)")
    }
}

/// Largest absolute difference between two equally long arrays.
private func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
    zip(a, b).map { abs($0 - $1) }.max() ?? 0
}
