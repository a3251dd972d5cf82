import Foundation
import Testing
import ModelFormats
@testable import MoEModels

/// RoPE against transformers (`Tests/Fixtures/rope/reference.json`, written by
/// `scripts/make_rope_reference.py`): YaRN's frequencies and scales, partial rotation and the
/// interleaved layout, each read from config.json keys as a checkpoint would carry them.
@Suite struct RotaryEmbeddingTests {
    struct Case: Decodable {
        let name: String
        let config_keys: JSONValue
        let head_dim: Int
        let max_position_embeddings: Int
        let layout: String
        let inverse_frequencies: [Float]
        let attention_scaling: Float
        let softmax_scale_multiplier: Double
        let position: Int
        let input: [Float]
        let rotated: [Float]
    }

    struct Document: Decodable { let cases: [Case] }

    static let cases: [Case] = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/rope/reference.json")
        return (try? JSONDecoder().decode(Document.self, from: Data(contentsOf: url)).cases) ?? []
    }()

    /// A Qwen3-MoE config.json carrying the case's rope keys.
    static func config(_ c: Case) throws -> ModelConfig {
        var json: [String: JSONValue] = [
            "architectures": .array([.string("Qwen3MoeForCausalLM")]), "vocab_size": .number(16), "hidden_size": .number(64),
            "num_hidden_layers": .number(1), "num_attention_heads": .number(2), "num_key_value_heads": .number(2),
            "head_dim": .number(Double(c.head_dim)), "num_experts": .number(2), "num_experts_per_tok": .number(1),
            "moe_intermediate_size": .number(8), "intermediate_size": .number(8),
            "max_position_embeddings": .number(Double(c.max_position_embeddings)),
        ]
        for (key, value) in c.config_keys.objectValue ?? [:] { json[key] = value }
        return try ModelConfig.parse(try JSONEncoder().encode(JSONValue.object(json)), file: "\(c.name)/config.json")
    }

    @Test func fixtureIsPresent() { #expect(Self.cases.count >= 6) }

    @Test(arguments: cases.map(\.name))
    func matchesTransformers(name: String) throws {
        let c = try #require(Self.cases.first { $0.name == name })
        let config = try Self.config(c)
        let rope = RotaryEmbedding(headDim: config.headDim, theta: config.ropeTheta, parameters: config.rope,
                                   maxPositionEmbeddings: config.maxPositionEmbeddings,
                                   layout: c.layout == "interleaved" ? .interleaved : .rotateHalf)
        #expect(rope.rotaryDim == 2 * c.inverse_frequencies.count)
        #expect(rope.inverseFrequencies.count == c.inverse_frequencies.count)
        for (ours, theirs) in zip(rope.inverseFrequencies, c.inverse_frequencies) {
            #expect(abs(ours - theirs) <= 2e-6 * abs(theirs), "inverse frequency \(ours) vs \(theirs)")
        }
        #expect(abs(rope.attentionScaling - c.attention_scaling) <= 1e-6)
        let multiplier = config.rope.softmaxScaleMultiplier(maxPositionEmbeddings: config.maxPositionEmbeddings)
        #expect(abs(multiplier - c.softmax_scale_multiplier) <= 1e-9)
        var x = c.input
        x.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, headCount: 1, position: c.position) }
        // At position 1234 a one-ulp difference in a float32 frequency moves the angle by ~1e-4
        // relative, so the rotated values are compared at that resolution.
        #expect(maxAbsDifference(x, c.rotated) <= 1e-4, "rotated head differs by \(maxAbsDifference(x, c.rotated))")
    }

    /// The rotary part of a wider head (multi-head latent attention): only the `rotaryDim`
    /// values at each head's start move, heads `headStride` apart.
    @Test func stridedHeadsRotateOnlyTheirRotaryPart() {
        let rope = RotaryEmbedding(headDim: 4, theta: 10000, parameters: RopeParameters(), maxPositionEmbeddings: 0,
                                   layout: .interleaved)
        var x: [Float] = [1, 0, 0, 1, 9, 9, /* head 2 */ 1, 0, 0, 1, 8, 8]
        x.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, headCount: 2, headStride: 6, position: 2) }
        for head in 0..<2 {
            let h = Array(x[(head * 6)..<(head * 6 + 6)])
            #expect(abs(h[0] - cosf(2)) < 1e-6 && abs(h[1] - sinf(2)) < 1e-6) // pair (0, 1), frequency 1
            #expect(abs(h[2] - -sinf(0.02)) < 1e-6 && abs(h[3] - cosf(0.02)) < 1e-6) // pair (2, 3), frequency 0.01
            #expect(h[4] == Float(9 - head) && h[5] == Float(9 - head))
        }
    }

    @Test func ropeRotatesPairsHalfADimensionApart() {
        let rope = RotaryEmbedding(headDim: 4, theta: 10000)
        #expect(rope.inverseFrequencies == [1, 0.01])
        var x: [Float] = [1, 0, 0, 1] // pairs (x0, x2) and (x1, x3)
        x.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, headCount: 1, position: 2) }
        #expect(abs(x[0] - cosf(2)) < 1e-6 && abs(x[2] - sinf(2)) < 1e-6)
        #expect(abs(x[1] - -sinf(0.02)) < 1e-6 && abs(x[3] - cosf(0.02)) < 1e-6)
        var unchanged: [Float] = [0.3, -0.7, 1.1, 2.0]
        let copy = unchanged
        unchanged.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, headCount: 1, position: 0) }
        #expect(unchanged == copy)
    }

    @Test func unsupportedRopeTypesAreRefusedByName() throws {
        let json = """
        {"architectures": ["Qwen3MoeForCausalLM"], "vocab_size": 16, "hidden_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 8,
         "intermediate_size": 8, "rope_theta": 10000, "rope_scaling": {"rope_type": "longrope", "factor": 4}}
        """
        #expect(throws: ModelFormatError.self) { try ModelConfig.parse(Data(json.utf8), file: "c.json") }
    }
}
