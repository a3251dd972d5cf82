import Foundation
import Testing
@testable import ModelFormats

/// An architecture is its description plus one registry line: every lookup (by class name, by
/// `model_type`, from a manifest) goes through `ArchitectureRegistry.descriptions`, so whatever is
/// registered is found, and anything else is refused naming what is supported.
@Suite struct ArchitectureRegistryTests {
    static let registered = ArchitectureRegistry.descriptions

    /// The message of the error `body` throws, or nil.
    static func failure(_ body: () throws -> Any) -> String? {
        do { _ = try body(); return nil } catch { return "\(error)" }
    }

    static func parse(_ json: String) throws -> ModelConfig {
        try ModelConfig.parse(Data(json.utf8), file: "config.json")
    }

    @Test func classNamesAndModelTypesAreUnique() {
        #expect(Set(Self.registered.map(\.className)).count == Self.registered.count)
        #expect(Set(Self.registered.map(\.modelType)).count == Self.registered.count)
        #expect(Architecture.allCases.map(\.rawValue) == Self.registered.map(\.className))
    }

    @Test func everyRegisteredDescriptionIsFoundByItsClassName() throws {
        for description in Self.registered {
            let architecture = try #require(Architecture(rawValue: description.className))
            #expect(architecture.definition.className == description.className)
            #expect(architecture.modelType == description.modelType)
            #expect(ArchitectureDescription.of(architecture).expertWidthKey == description.expertWidthKey)
            // As a manifest stores it.
            let coded = try JSONDecoder().decode(Architecture.self, from: JSONEncoder().encode(architecture))
            #expect(coded == architecture)
        }
    }

    /// A config naming a registered architecture, by class or (without `architectures`) by
    /// `model_type`, gets past the lookup: what fails next is a missing key, not the architecture.
    @Test func configLookupFindsEveryRegisteredDescription() {
        for description in Self.registered {
            let byClass = Self.failure { try Self.parse(#"{"architectures": ["\#(description.className)"]}"#) }
            let byType = Self.failure { try Self.parse(#"{"model_type": "\#(description.modelType)"}"#) }
            for message in [byClass, byType] {
                #expect(message?.contains("unknown architecture") == false, "\(description.className): \(message ?? "parsed")")
            }
        }
    }

    @Test func theBuiltInArchitecturesParseByClassNameOrModelType() throws {
        let generic = """
        "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rope_theta": 10000.0, "num_experts": 4, "num_local_experts": 4, "num_experts_per_tok": 2,
        "intermediate_size": 16, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 0,
        "max_position_embeddings": 64
        """
        for architecture in [Architecture.mixtral, .qwen2Moe, .qwen3Moe, .olmoe] {
            let byClass = try Self.parse(#"{"architectures": ["\#(architecture.rawValue)"], \#(generic)}"#)
            let byType = try Self.parse(#"{"model_type": "\#(architecture.modelType)", \#(generic)}"#)
            #expect(byClass.architecture == architecture)
            #expect(byType.architecture == architecture)
            #expect(byClass == byType)
            #expect(byClass.expertCount == 4 && byClass.expertsPerToken == 2)
        }
    }

    @Test func unknownArchitecturesAreRefusedWithTheSupportedList() {
        let supported = Self.registered.map(\.className).joined(separator: ", ")
        let byClass = Self.failure { try Self.parse(#"{"architectures": ["NopeForCausalLM"], "model_type": "mixtral"}"#) }
        #expect(byClass == "config.json: unknown architecture 'NopeForCausalLM' (supported: \(supported))")
        let byType = Self.failure { try Self.parse(#"{"model_type": "nope"}"#) }
        #expect(byType == "config.json: unknown architecture 'nope' (supported: \(supported))")
        #expect(Architecture(rawValue: "NopeForCausalLM") == nil)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(Architecture.self, from: Data(#""NopeForCausalLM""#.utf8)) }
    }
}
