import Foundation
import Testing
import ModelFormats
import TensorMath
@testable import MoEModels

/// llama.cpp's `deepseek2` architecture: a DeepSeek-V3-style model (query compression,
/// multi-head latent attention, sigmoid routing in groups with the correction bias, a dense first
/// layer, a shared expert) converted by llama.cpp's converter and quantised by `llama-quantize`,
/// against llama.cpp's next-token distributions (`llama-server` `/completion`, `n_probs: 5`),
/// recorded by `scripts/gguf/make_deepseek2_fixture.py` in Tests/Fixtures/gguf/deepseek2.
@Suite struct GGUFDeepseek2Tests {
    static let root = LlamaCppReference.root.appendingPathComponent("deepseek2")
    static let reference: LlamaCppReference? = try? JSONDecoder().decode(
        LlamaCppReference.self, from: Data(contentsOf: root.appendingPathComponent("reference.json")))

    @Test func configurationFromTheMetadata() throws {
        let gguf = try GGUFModel(url: Self.root.appendingPathComponent("deepseek2-Q8_0.gguf"))
        let config = gguf.config
        #expect(config.architecture == .deepseekV3)
        #expect(config.latentAttention == LatentAttentionConfig(queryRank: 64, latentRank: 64, noPositionDim: 32, ropeDim: 16,
                                                                valueDim: 32, interleavedRope: true))
        #expect(config.firstDenseLayers == 1 && config.moeLayers == [1, 2])
        #expect(config.routerGroups == RouterSpec.GroupLimit(groupCount: 4, selectedGroups: 2, groupScore: .topTwoSum))
        #expect(config.normTopKProb && config.routedScalingFactor == 2.5)
        #expect(config.expertCount == 8 && config.expertsPerToken == 2 && config.sharedExpertIntermediateSize == 32)
        #expect(config.tieWordEmbeddings)
        // The per-head halves of kv_b_proj, and the correction bias, by llama.cpp's names.
        #expect(gguf.reference("model.layers.1.self_attn.k_b_proj.weight")?.name == "blk.1.attn_k_b.weight")
        #expect(gguf.reference("model.layers.2.mlp.gate.e_score_correction_bias")?.name == "blk.2.exp_probs_b.bias")
        #expect(!gguf.contains("model.layers.0.self_attn.kv_b_proj.weight"))
    }

    /// `attn_k_b` and `attn_v_b` are `kv_b_proj`'s rows regrouped: W_UK_h transposed and W_UV_h.
    /// Rebuilt here into kv_b_proj's layout, the layer built from it computes the same logits as
    /// the one built from the two halves (the converter's split is undone exactly).
    @Test func splitHalvesAreKvBProj() throws {
        let gguf = try GGUFModel(url: Self.root.appendingPathComponent("deepseek2-Q4_0.gguf"))
        let latent = try #require(gguf.config.latentAttention)
        let heads = gguf.config.headCount, rank = latent.latentRank, nope = latent.noPositionDim, v = latent.valueDim
        let prefix = "model.layers.1.self_attn"
        let kB = try gguf.matrix("\(prefix).k_b_proj.weight", rows: heads * rank, cols: nope)
        let vB = try gguf.matrix("\(prefix).v_b_proj.weight", rows: heads * v, cols: rank)
        var kvB = [Float](repeating: 0, count: heads * (nope + v) * rank) // [heads * (nope + v), rank]
        for h in 0..<heads {
            for c in 0..<rank {
                let row = kB.row(h * rank + c)
                for d in 0..<nope { kvB[(h * (nope + v) + d) * rank + c] = row[d] }
            }
            for d in 0..<v { kvB.replaceSubrange((h * (nope + v) + nope + d) * rank..<(h * (nope + v) + nope + d + 1) * rank, with: vB.row(h * v + d)) }
        }
        let fromSplit = try LatentAttentionLayer(layer: 1, config: gguf.config, dims: latent, weights: gguf)
        let fromKvB = try LatentAttentionLayer(layer: 1, config: gguf.config, dims: latent,
                                               weights: OverlaySource(base: gguf, name: "\(prefix).kv_b_proj.weight", values: kvB))
        for h in 0..<heads {
            #expect((0..<rank).allSatisfy { fromSplit.absorbKeys[h].row($0) == fromKvB.absorbKeys[h].row($0) })
            #expect((0..<v).allSatisfy { fromSplit.expandValues[h].row($0) == fromKvB.expandValues[h].row($0) })
        }
    }

    /// At every prefix of every prompt: llama.cpp's top-1 token (near-ties aside) and each of
    /// llama.cpp's top-5 log-probabilities within 0.1, with llama.cpp's arithmetic emulated as in
    /// `GGUFLlamaCppTests` (f16 KV cache: here the latent and rotary key; its CPU flash attention
    /// over the MQA the latent makes; its rotary angles).
    ///
    /// Measured 2026-12-04 (`--filter GGUFDeepseek2Tests`): max |Δ| Q8_0 0.0000, Q4_0 0.035; both held
    /// to the issue's 0.1. Q8_0 was at 0.393 (issue 21's open gap) until its products summed in ggml's
    /// own order (`CKernels/q8_0.c`: eight float lanes of four products, as `ggml_vec_dot_q8_0_q8_0`
    /// and llamafile's `tinyBLAS_Q0_AVX`); the former order (one int32 sum per block into lane b mod 8)
    /// left the absorbed query and the latent off in their last bits, which the f16 query/key rounding, attn_v_b's
    /// 8-bit rounding of the latent context and the near-tied expert groups amplified. Q4_0 meets 0.1
    /// since its attn_k_b/attn_v_b heads, converted to q4 on load (`GGMLQ4_0`), are sliced in that type
    /// (`LatentAttentionLayer.head`) and run the integer-dot kernels (0.911 widened to float32).
    static let knownGaps: [String: Double] = [:]

    @Test(arguments: reference?.models ?? [])
    func nextTokenDistributionMatchesLlamaCpp(model reference: LlamaCppReference.Model) throws {
        let prompts = try #require(Self.reference).prompts
        let worst = try Self.compare(file: Self.root.appendingPathComponent(reference.file), reference: reference, prompts: prompts,
                                     bound: Self.knownGaps[reference.file] ?? 0.1)
        print("\(reference.file): \(reference.steps.count) prefixes, max |Δ logprob| over llama.cpp's top 5 = \(String(format: "%.4f", worst))")
    }

    /// The DeepSeek-V2-Lite-style file (`make_deepseek2_fixture.py --lite`): 26 layers (llama.cpp's
    /// condition for a missing `q_lora_rank`), no query compression, softmax routing without groups,
    /// bias or renormalisation, two shared experts, untied embeddings; the issue's 0.1 at every prefix.
    @Test func liteFileWithoutQueryCompressionMatchesLlamaCpp() throws {
        let root = LlamaCppReference.root.appendingPathComponent("deepseek2-lite")
        let lite = try JSONDecoder().decode(LlamaCppReference.self, from: Data(contentsOf: root.appendingPathComponent("reference.json")))
        let file = root.appendingPathComponent("deepseek2lite-Q8_0.gguf")
        let config = try GGUFModel(url: file).config
        #expect(config.architecture == .deepseekV2 && config.layerCount == 26)
        #expect(config.latentAttention?.queryRank == nil && config.routerGroups == nil)
        #expect(config.sharedExpertIntermediateSize == 64 && !config.tieWordEmbeddings && !config.normTopKProb)
        for model in lite.models {
            let worst = try Self.compare(file: root.appendingPathComponent(model.file), reference: model, prompts: lite.prompts, bound: 0.1)
            print("\(model.file): \(model.steps.count) prefixes, max |Δ logprob| over llama.cpp's top 5 = \(String(format: "%.4f", worst))")
        }
    }

    /// For bisecting a gap by hand: `MOE_DEEPSEEK2_VARIANTS=DIR` compares every `DIR/*/reference.json`
    /// (written as `make_deepseek2_fixture.py` writes the fixture's, from variants of its checkpoint)
    /// and prints each file's largest difference and where it is; asserts nothing about them.
    @Test func variantsByHand() throws {
        guard let path = ProcessInfo.processInfo.environment["MOE_DEEPSEEK2_VARIANTS"] else { return }
        let dir = URL(fileURLWithPath: path)
        for name in try FileManager.default.contentsOfDirectory(atPath: path).sorted() {
            let sub = dir.appendingPathComponent(name)
            guard let data = try? Data(contentsOf: sub.appendingPathComponent("reference.json")) else { continue }
            let reference = try JSONDecoder().decode(LlamaCppReference.self, from: data)
            for model in reference.models {
                var places: [String] = []
                let worst = try Self.compare(file: sub.appendingPathComponent(model.file), reference: model, prompts: reference.prompts,
                                             bound: nil) { places.append($0) }
                print("variant \(name)/\(model.file): max |Δ logprob| \(String(format: "%.4f", worst)) \(places.joined(separator: " "))")
            }
        }
    }

    /// `LlamaCppReference.compare` on `reference`'s file; the largest |Δ|.
    static func compare(file: URL, reference: LlamaCppReference.Model, prompts: [[Int]], bound: Double?,
                        note: (String) -> Void = { _ in }) throws -> Double {
        try LlamaCppReference.compare(file: file, architecture: reference.architecture, steps: reference.steps, prompts: prompts,
                                      bound: bound, note: note).worst
    }

    /// `pack FILE.gguf STORE` of the deepseek2 file (attn_k_b/attn_v_b stored as dense matrices,
    /// heads stacked as rows): the store computes the file's logits bit for bit.
    @Test(arguments: ["deepseek2-Q8_0.gguf", "deepseek2-Q4_0.gguf"])
    func packedStoreGivesTheSameLogits(name: String) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("deepseek2-store-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = Self.root.appendingPathComponent(name)
        var packer = ExpertStorePacker()
        packer.dtype = .ggml
        _ = try packer.pack(gguf: GGUFModel(url: file), to: dir)
        let tokens = [5, 300, 42, 7, 1000, 12]
        func logits(_ model: TransformerModel) throws -> [Float] {
            try model.forward([SequenceInput(cache: model.makeCache(), tokens: tokens, allLogits: true)])[0]
        }
        let expected = try logits(ModelLoader.load(at: file))
        let actual = try logits(ModelLoader.load(at: dir))
        #expect(expected.map(\.bitPattern) == actual.map(\.bitPattern))
    }
}

/// A weight source with one matrix replaced (float32 values), for the kv_b_proj rebuild.
private final class OverlaySource: WeightSource, @unchecked Sendable {
    let base: GGUFModel
    let name: String
    let values: [Float]

    init(base: GGUFModel, name: String, values: [Float]) {
        self.base = base
        self.name = name
        self.values = values
    }

    func contains(_ name: String) -> Bool { name == self.name || base.contains(name) }
    func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
        name == self.name ? WeightMatrix(rows: rows, cols: cols, values: values) : try base.matrix(name, rows: rows, cols: cols)
    }
    func vector(_ name: String, count: Int) throws -> [Float] { try base.vector(name, count: count) }
}
