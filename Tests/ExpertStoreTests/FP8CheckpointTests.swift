import Foundation
import Testing
import ModelFormats
import MoEModels
import TensorMath

/// Fine-grained FP8 checkpoints (`Tests/Fixtures/fp8`, `scripts/make_fp8_fixture.py`): a tiny
/// DeepSeek-V3 with float8 e4m3fn weights and 16x16 block scales, and its bf16 twin holding the
/// same weights dequantized. Read directly or packed, the FP8 one must be the twin.
@Suite struct FP8CheckpointTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/fp8")
    static let fp8 = root.appendingPathComponent("deepseekv3-fp8")
    static let twin = root.appendingPathComponent("deepseekv3-bf16-twin")

    @Test func e4m3Decoding() {
        let table = FP8BlockScaling.e4m3
        #expect(table[0x38] == 1 && table[0xB8] == -1)           // exponent 7 = 2^0
        #expect(table[0x7E] == 448)                                // the largest finite value
        #expect(table[0x01] == Float(sign: .plus, exponent: -9, significand: 1)) // smallest subnormal
        #expect(table[0x7F].isNaN && table[0xFF].isNaN)
        #expect(table[0x00] == 0)
    }

    @Test func everyWeightEqualsTheTwinsBitForBit() throws {
        let quantized = try CheckpointDirectory(url: Self.fp8), plain = try CheckpointDirectory(url: Self.twin)
        #expect(quantized.fp8Scaling == FP8BlockScaling(blockRows: 16, blockCols: 16))
        var floatEight = 0
        for name in plain.tensorNames {
            let (entry, _) = try plain.entry(name)
            if try quantized.entry(name).0.dtype == .f8e4m3 { floatEight += 1 }
            #expect(!quantized.isFP8Scale(name))
            if entry.shape.count == 2 {
                let a = try quantized.matrix(name, rows: entry.shape[0], cols: entry.shape[1])
                let b = try plain.matrix(name, rows: entry.shape[0], cols: entry.shape[1])
                #expect((0..<a.rows).allSatisfy { a.row($0).map(\.bitPattern) == b.row($0).map(\.bitPattern) }, "\(name)")
            } else {
                #expect(try quantized.vector(name, count: entry.elementCount) == plain.vector(name, count: entry.elementCount))
            }
        }
        #expect(floatEight > 50)
        #expect(quantized.tensorNames.filter(quantized.isFP8Scale).count == floatEight)
    }

    @Test func logitsEqualTheTwinsReadDirectlyAndPacked() throws {
        let expected = try logits(ModelLoader.loadCheckpoint(at: Self.twin))
        #expect(try logits(ModelLoader.loadCheckpoint(at: Self.fp8)).map(\.bitPattern) == expected.map(\.bitPattern))

        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = dir.appendingPathComponent("bf16")
        try pack(Self.fp8, to: store, dtype: .bf16, codec: .lz4)
        let opened = try ExpertStore(url: store)
        #expect(opened.verify().isEmpty)
        #expect(!opened.manifest.dense.tensors.contains { $0.name.hasSuffix("_scale_inv") || $0.dtype == .f8e4m3 })
        #expect(try logits(ModelLoader.load(at: store)).map(\.bitPattern) == expected.map(\.bitPattern))

        let int8 = dir.appendingPathComponent("int8")
        try pack(Self.fp8, to: int8, dtype: .int8)
        let quantized = try logits(ModelLoader.load(at: int8))
        let rms = { (v: [Float]) in (v.reduce(0) { $0 + $1 * $1 } / Float(v.count)).squareRoot() }
        #expect(rms(zip(expected, quantized).map { $0 - $1 }) / rms(expected) < 0.01)
    }

    /// DeepSeek-V3's checkpoints carry a multi-token prediction layer past `num_hidden_layers`
    /// (`model.layers.61.*`): it is neither packed nor counted, and changes nothing.
    @Test func layersPastTheLastAreLeftOut() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let checkpoint = dir.appendingPathComponent("with-mtp")
        try FileManager.default.createDirectory(at: checkpoint, withIntermediateDirectories: true)
        for file in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(at: Self.twin.appendingPathComponent(file), to: checkpoint.appendingPathComponent(file))
        }
        var extra = SafetensorsWriter()
        extra.add("model.layers.3.mlp.shared_experts.up_proj.weight", shape: [4096, 64], values: [Float](repeating: 0.5, count: 4096 * 64), dtype: .bf16)
        try extra.write(to: checkpoint.appendingPathComponent("mtp.safetensors"))
        var weightMap: [String: String] = [:]
        for name in try CheckpointDirectory(url: Self.twin).tensorNames { weightMap[name] = "model.safetensors" }
        weightMap["model.layers.3.mlp.shared_experts.up_proj.weight"] = "mtp.safetensors"
        try JSONSerialization.data(withJSONObject: ["metadata": [:], "weight_map": weightMap])
            .write(to: checkpoint.appendingPathComponent("model.safetensors.index.json"))

        let opened = try CheckpointDirectory(url: checkpoint)
        #expect(opened.isBeyondLastLayer("model.layers.3.mlp.shared_experts.up_proj.weight"))
        #expect(!opened.isBeyondLastLayer("model.layers.2.mlp.gate.weight"))
        let store = dir.appendingPathComponent("store")
        try pack(checkpoint, to: store)
        #expect(try !ExpertStore(url: store).manifest.dense.tensors.contains { $0.name.hasPrefix("model.layers.3.") })
        let expected = try logits(ModelLoader.loadCheckpoint(at: Self.twin))
        #expect(try logits(ModelLoader.load(at: store)).map(\.bitPattern) == expected.map(\.bitPattern))
    }

    @Test func otherQuantizationMethodsAreRefusedByName() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        for file in try FileManager.default.contentsOfDirectory(atPath: Self.fp8.path) {
            try FileManager.default.copyItem(at: Self.fp8.appendingPathComponent(file), to: dir.appendingPathComponent(file))
        }
        let config = dir.appendingPathComponent("config.json")
        let text = try String(contentsOf: config, encoding: .utf8).replacingOccurrences(of: "\"quant_method\": \"fp8\"", with: "\"quant_method\": \"gptq\"")
        try text.write(to: config, atomically: true, encoding: .utf8)
        #expect(errorText { _ = try CheckpointDirectory(url: dir) }?.contains("unsupported quantization_config.quant_method 'gptq'") == true)
    }
}
