import Foundation
import ModelFormats
import TensorMath
import Testing
@testable import MoEModels

/// `synth --shape … --gguf-out FILE.gguf`: a synthetic latent-attention checkpoint written
/// straight to a Q4_0 GGUF in llama.cpp's `deepseek2` layout (issue 20 item 5), checked by
/// reading it back through `GGUFModel` on the 27-layer test shape (`deepseek-v2-lite-tiny`,
/// ~6 MB): the configuration equals the Hugging Face checkpoint's, and every tensor holds the
/// values that checkpoint holds (Q4_0 ones as ggml's encoder makes them from those values).
/// llama.cpp itself loading the file, its bytes equal to `convert_hf_to_gguf` + `llama-quantize`
/// output and its top-1 tokens: `scripts/gguf/check_synth_gguf.py` (needs a built llama.cpp).
@Suite struct SyntheticGGUFTests {
    static let demoModel = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("DemoModel")

    /// The tiny shape with the demo model's tokenizer, written to a fresh temporary file.
    static func written() throws -> (SyntheticCheckpoint, GGUFModel, URL) {
        let shape = try #require(SyntheticCheckpoint.shapes.first { $0.name == "deepseek-v2-lite-tiny" })
        let synthetic = SyntheticCheckpoint(shape: shape, seed: 7, vocabSize: 4096, eosTokenId: 0)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("synth-gguf-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = directory.appendingPathComponent("tiny.gguf")
        try synthetic.writeGGUF(to: url, tokenizerDirectory: demoModel)
        return (synthetic, try GGUFModel(url: url), directory)
    }

    @Test func configurationReadsBackAsTheCheckpoints() throws {
        let (synthetic, gguf, directory) = try Self.written()
        defer { try? FileManager.default.removeItem(at: directory) }
        let expected = try synthetic.parsedConfig(), config = gguf.config
        #expect(gguf.ggufArchitecture == "deepseek2")
        #expect(config.architecture == .deepseekV2)
        #expect(config.latentAttention == expected.latentAttention && config.latentAttention?.queryRank == nil)
        #expect(config.layerCount == 27 && config.hiddenSize == 128 && config.headCount == 4 && config.vocabSize == 4096)
        #expect(config.expertCount == 8 && config.expertsPerToken == 2 && config.expertIntermediateSize == 64)
        #expect(config.firstDenseLayers == 1 && config.denseIntermediateSize == 256 && config.sharedExpertIntermediateSize == 128)
        #expect(!config.normTopKProb && config.routedScalingFactor == 1 && config.routerGroups == nil && !config.tieWordEmbeddings)
        #expect(config.rope.kind == .yarn && config.rope.yarn?.factor == 40 && config.rope.yarn?.originalMaxPositionEmbeddings == 4096)
        #expect(abs((config.rope.yarn?.mscaleAllDim ?? 0) - 0.707) < 1e-6)
        #expect(config.eosTokenIds == [0])
        // The tokenizer reads back as the demo model's: the same merges, added tokens and
        // vocabulary (the added tokens aside, which GGUFTokenizerFiles lists only as added).
        let files = try GGUFTokenizerFiles(metadata: gguf.metadata, file: gguf.url.path)
        func json(_ data: Data) throws -> [String: Any] { try #require(JSONSerialization.jsonObject(with: data) as? [String: Any]) }
        let fromGGUF = try json(files.tokenizerJSON)
        let demo = try json(Data(contentsOf: Self.demoModel.appendingPathComponent("tokenizer.json")))
        let ggufModel = try #require(fromGGUF["model"] as? [String: Any]), demoModel = try #require(demo["model"] as? [String: Any])
        let demoMerges = (demoModel["merges"] as? [[String]] ?? []).map { $0.joined(separator: " ") }
        #expect(ggufModel["merges"] as? [String] == demoMerges && demoMerges.count > 1000)
        let added = (demo["added_tokens"] as? [[String: Any]] ?? []).compactMap { $0["content"] as? String }
        #expect((fromGGUF["added_tokens"] as? [[String: Any]] ?? []).compactMap { $0["content"] as? String } == added)
        var demoVocab = try #require(demoModel["vocab"] as? [String: Int])
        for token in added { demoVocab[token] = nil }
        #expect(ggufModel["vocab"] as? [String: Int] == demoVocab)
        #expect(gguf.metadata["tokenizer.ggml.pre"]?.stringValue == "qwen2")
    }

    @Test func everyTensorHoldsTheCheckpointsValues() throws {
        let (synthetic, gguf, directory) = try Self.written()
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = gguf.config
        let latent = try #require(config.latentAttention)
        var checked = 0
        for tensor in try synthetic.tensors() {
            let values = synthetic.bf16Values(of: tensor)
            let floats = values.map { FloatConversion.float(fromBF16: $0) }
            if tensor.name.hasSuffix("kv_b_proj.weight") {
                // kv_b_proj [heads·(nope + v), rank] comes back as its per-head halves (Q4_0):
                // every k_b row (head h, latent r) is column r of the head's nope key rows, every
                // v_b row one of its value rows, each within one step of its Q4_0 block.
                let prefix = String(tensor.name.dropLast("kv_b_proj.weight".count))
                let heads = config.headCount, rank = latent.latentRank, nope = latent.noPositionDim, v = latent.valueDim
                let kB = try gguf.matrix(prefix + "k_b_proj.weight", rows: heads * rank, cols: nope)
                let vB = try gguf.matrix(prefix + "v_b_proj.weight", rows: heads * v, cols: rank)
                var worst: Float = 0
                for h in 0..<heads {
                    for r in 0..<rank {
                        worst = max(worst, Self.stepsOff(kB.row(h * rank + r), (0..<nope).map { floats[(h * (nope + v) + $0) * rank + r] }))
                    }
                    for j in 0..<v {
                        let start = (h * (nope + v) + nope + j) * rank
                        worst = max(worst, Self.stepsOff(vB.row(h * v + j), Array(floats[start..<(start + rank)])))
                    }
                }
                #expect(worst <= 1.01, "\(tensor.name): error \(worst) steps")
                checked += 1
                continue
            }
            let rows = tensor.shape.count == 2 ? tensor.shape[0] : 1, cols = tensor.shape.last!
            if tensor.shape.count == 1 {
                #expect(try gguf.vector(tensor.name, count: cols) == floats, "\(tensor.name)")
                checked += 1
                continue
            }
            let matrix = GGMLQ4_0.floatScales(try gguf.matrix(tensor.name, rows: rows, cols: cols)) // float16 scales widened: the q4 case below
            var fileBlocks: [UInt8]? = nil
            switch matrix.storage {
            case .ggml(let type, let blocks) where type == .q4_0: fileBlocks = Array(UnsafeRawBufferPointer(start: blocks, count: matrix.byteCount))
            case .q4(let blocks, let scales): // Q4_0 as the reader converts it (GGMLQ4_0): joined back into the file's blocks
                var joined = [UInt8](repeating: 0, count: rows * cols / 32 * GGMLQ4_0.blockBytes)
                joined.withUnsafeMutableBytes { GGMLQ4_0.join(blocks: blocks, scales: scales, blockCount: rows * cols / 32, into: $0.baseAddress!) }
                fileBlocks = joined
            default: break
            }
            guard let fileBlocks else {
                // F32 (the router): exact.
                #expect((0..<rows).allSatisfy { matrix.row($0) == Array(floats[($0 * cols)..<(($0 + 1) * cols)]) }, "\(tensor.name)")
                #expect(tensor.name.hasSuffix("mlp.gate.weight"), "\(tensor.name) is not Q4_0")
                checked += 1
                continue
            }
            // The blocks ggml's reference encoder makes from the checkpoint's values ...
            let expected = SyntheticCheckpoint.encode(values, as: .q4_0)
            #expect(fileBlocks == expected, "\(tensor.name)")
            // ... which decode to those values within one step of their block (a value of +8 steps
            // clamps to +7; 1% more for the float16 rounding of the step).
            let worst = (0..<rows).map { Self.stepsOff(matrix.row($0), Array(floats[($0 * cols)..<(($0 + 1) * cols)])) }.max() ?? 0
            #expect(worst <= 1.01, "\(tensor.name): error \(worst) steps")
            checked += 1
        }
        #expect(checked == (try synthetic.tensors().count))
        // Nothing but these tensors: 3 + 27 layers of MLA (q, kv_a, kv_a norm, k_b, v_b, o, 2 norms),
        // the dense first layer's 3, the MoE layers' router, 3 shared and 3 stacked.
        #expect(gguf.tensors.count == 3 + 27 * 8 + 3 + 26 * 7)
        #expect(gguf.tensors["blk.1.ffn_gate_exps.weight"]?.info.dims == [128, 64, 8])
        #expect(gguf.tensors["blk.1.attn_k_b.weight"]?.info.dims == [32, 64, 4])
        #expect(gguf.tensors["blk.1.attn_v_b.weight"]?.info.dims == [64, 32, 4])
    }

    /// The largest error of `decoded` against `original`, in steps of its Q4_0 block of 32
    /// (a block's step is its largest magnitude / 8).
    static func stepsOff(_ decoded: [Float], _ original: [Float]) -> Float {
        var worst: Float = 0
        for block in 0..<(original.count / 32) {
            let slice = original[(block * 32)..<(block * 32 + 32)]
            let step = max((slice.map(abs).max() ?? 0) / 8, 1e-30)
            for (j, x) in slice.enumerated() { worst = max(worst, abs(decoded[block * 32 + j] - x) / step) }
        }
        return worst
    }

    /// The model runs from the file (the whole forward path, MLA included) with finite logits.
    @Test func theFileRuns() throws {
        let (_, _, directory) = try Self.written()
        defer { try? FileManager.default.removeItem(at: directory) }
        let model = try ModelLoader.load(at: directory.appendingPathComponent("tiny.gguf"))
        let cache = model.makeCache()
        _ = try model.forward([SequenceInput(cache: cache, tokens: [17, 300, 2048])])
        let logits = try model.forward([SequenceInput(cache: cache, tokens: [5])])[0]
        #expect(logits.count == 4096 && logits.allSatisfy(\.isFinite))
    }

    /// ggml's rounding: the extreme value is −8 steps, and codes are truncations of x/d + 8.5.
    @Test func referenceEncoderOnAKnownBlock() {
        var x = [Float](repeating: 0, count: 32)
        x[0] = -4; x[1] = 2; x[2] = 1.2; x[16] = 3.9; x[17] = -0.26
        var out = [UInt8](repeating: 0, count: 18)
        GGMLReferenceQ4_0.encode(x, count: 32, into: &out)
        #expect(out[0] == 0x00 && out[1] == 0x38) // d = -4 / -8 = 0.5 as float16 (0x3800)
        // x/d + 8.5: -4 → 0.5 → 0; 2 → 12.5 → 12; 1.2 → 10.9 → 10; 3.9 → 16.3 → 15 (clamped); -0.26 → 7.98 → 7; 0 → 8.
        #expect(out[2] == (0 | 15 << 4) && out[3] == (12 | 7 << 4) && out[4] == (10 | 8 << 4) && out[5] == (8 | 8 << 4))
    }
}
