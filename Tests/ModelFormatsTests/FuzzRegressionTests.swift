import Foundation
import Testing
@testable import ModelFormats

/// Damaged safetensors headers that trapped on an integer overflow (seen while writing the
/// model_formats fuzz target, fixed before it ran): each is refused with a one-line error.
@Suite struct SafetensorsHeaderTests {
    /// An 8-byte little-endian header length, then `header`, then `dataBytes` zeros.
    func file(length: UInt64? = nil, _ header: String, dataBytes: Int = 16) -> [UInt8] {
        let json = Array(header.utf8)
        return withUnsafeBytes(of: (length ?? UInt64(json.count)).littleEndian, Array.init) + json + [UInt8](repeating: 0, count: dataBytes)
    }

    func parse(_ bytes: [UInt8]) throws -> [String: SafetensorsEntry] {
        try bytes.withUnsafeBytes { try SafetensorsFile.parseHeader(base: $0.baseAddress!, size: $0.count, path: "t.safetensors") }
    }

    func errorText(_ bytes: [UInt8]) -> String? {
        do { _ = try parse(bytes); return nil } catch { return "\(error)" }
    }

    @Test func aValidHeaderParses() throws {
        let entries = try parse(file(#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#))
        #expect(entries["a"]?.byteCount == 16)
    }

    @Test func headerLengthBeyondInt64IsRefused() {
        #expect(errorText(file(length: UInt64.max, "{}"))?.contains("out of range") == true)
    }

    @Test func dataOffsetNearIntMaxIsRefused() {
        let end = Int.max - 2
        let message = errorText(file(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,\#(end)]}}"#))
        #expect(message?.contains("lies outside the file") == true, "\(message ?? "accepted")")
    }

    @Test func shapeWhoseSizeOverflowsIsRefused() {
        let message = errorText(file(#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#))
        #expect(message?.contains("impossible number of bytes") == true, "\(message ?? "accepted")")
        #expect(errorText(file(#"{"a":{"dtype":"F32","shape":[-2,-2],"data_offsets":[0,16]}}"#)) != nil)
    }
}

/// config.json inputs found by fuzzing (model_formats target; the input is in
/// Tests/Fuzz/corpus/model_formats/regression-config-zero-heads).
@Suite struct ConfigFuzzRegressionTests {
    let config = """
    {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 256, "num_attention_heads": 0, "num_hidden_layers": 2,
     "rope_theta": 10000, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 128,
     "intermediate_size": 1024, "vocab_size": 4096}
    """

    /// Zero attention heads without `head_dim` divided by zero (SIGFPE under -Ounchecked).
    @Test func zeroAttentionHeadsIsAnErrorNotADivisionByZero() {
        #expect(throws: ModelFormatError.self) { _ = try ModelConfig.parse(Data(config.utf8), file: "config.json") }
        let zeroKV = config.replacingOccurrences(of: #""num_attention_heads": 0"#, with: #""num_attention_heads": 4, "num_key_value_heads": 0"#)
        #expect(throws: ModelFormatError.self) { _ = try ModelConfig.parse(Data(zeroKV.utf8), file: "config.json") }
    }
}
