import Foundation
import ModelFormats
import Testing
@testable import MoEModels

/// `synth --shape gpt-oss-20b`: the tensors of gpt-oss-20b's published checkpoint (not written
/// here: 13.8 GB at its own vocabulary; `docs/BENCHMARKS.md` writes and runs it).
@Suite struct SyntheticGptOssShapeTests {
    @Test func gptOss20bHasItsPublishedLayoutAndParameterCount() throws {
        let shape = try #require(SyntheticCheckpoint.shapes.first { $0.name == "gpt-oss-20b" })
        let synthetic = SyntheticCheckpoint(shape: shape, seed: 1, vocabSize: 201088, eosTokenId: nil)
        let tensors = try synthetic.tensors()
        // MXFP4 blocks hold two parameters a byte; scales are not parameters.
        let parameters = tensors.reduce(0) { total, t in
            t.name.hasSuffix("_scales") ? total : total + t.shape.reduce(1, *) * (t.name.hasSuffix("_blocks") ? 2 : 1)
        }
        #expect(abs(Double(parameters) / 20.91e9 - 1) < 0.005, "\(parameters) parameters")
        #expect(tensors.contains { $0.name == "model.layers.23.mlp.experts.gate_up_proj_blocks" && $0.dtype == .u8 && $0.shape == [32, 5760, 90, 16] })
        #expect(tensors.contains { $0.name == "model.layers.23.mlp.experts.down_proj_scales" && $0.dtype == .u8 && $0.shape == [32, 2880, 90] })
        #expect(tensors.contains { $0.name == "model.layers.0.self_attn.sinks" && $0.shape == [64] })
        #expect(tensors.contains { $0.name == "model.layers.0.mlp.router.bias" && $0.shape == [32] })
        #expect(Set(tensors.map(\.name)).count == tensors.count)
        let expertBytes = tensors.filter { $0.dtype == .u8 }.reduce(0) { $0 + $1.byteCount }
        #expect(expertBytes == 24 * 32 * 3 * 2880 * 2880 / 32 * 17)   // 10.15 GB
        // Blocks precede their scales (llama.cpp's converter pairs them in file order).
        let names = tensors.map(\.name)
        let blocks = try #require(names.firstIndex(of: "model.layers.5.mlp.experts.down_proj_blocks"))
        #expect(names[blocks + 1] == "model.layers.5.mlp.experts.down_proj_scales")
        // The config parses as gpt-oss with alternating sliding and full layers.
        let config = try ModelConfig.parse(JSONSerialization.data(withJSONObject: synthetic.configJSON()), file: "config.json")
        #expect(config.layerTypes?.prefix(2) == ["sliding_attention", "full_attention"])
        #expect(config.slidingWindow == 128 && config.expertCount == 32 && config.expertsPerToken == 4)
    }

    @Test func projectionBiasesAndSinksAreRandomNormsAreOnes() {
        func tensor(_ name: String) -> SafetensorsStreamWriter.Tensor { .init(name: name, dtype: .bf16, shape: [8]) }
        #expect(SyntheticCheckpoint.isConstantOne(tensor("model.layers.0.input_layernorm.weight")))
        #expect(SyntheticCheckpoint.isConstantOne(tensor("model.layers.1.mlp.gate.e_score_correction_bias")))
        #expect(!SyntheticCheckpoint.isConstantOne(tensor("model.layers.0.self_attn.o_proj.bias")))
        #expect(!SyntheticCheckpoint.isConstantOne(tensor("model.layers.0.self_attn.sinks")))
    }
}
