import Foundation
import Testing
import ModelFormats
@testable import MoEModels

/// Damaged copies of a committed checkpoint must fail to load with one clear message naming
/// the file and the tensor — never crash, never load.
@Suite struct CheckpointErrorTests {
    /// Copies fixture `name` into a fresh temporary directory.
    func copyOfFixture(_ name: String) throws -> URL {
        let source = ReferenceFixture.committedRoot.appendingPathComponent(name)
        let destination = FileManager.default.temporaryDirectory.appendingPathComponent("moe-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: source, to: destination)
        return destination
    }

    func loadError(_ directory: URL) -> String? {
        do { _ = try ModelLoader.loadCheckpoint(at: directory); return nil } catch { return "\(error)" }
    }

    /// A sharded fixture (with model.safetensors.index.json) and a single-file one.
    func fixture(containing file: String) throws -> String {
        try #require(ReferenceFixture.committed.first {
            FileManager.default.fileExists(atPath: $0.directory.appendingPathComponent(file).path)
        }).directory.lastPathComponent
    }
    var shardedFixture: String { get throws { try fixture(containing: "model.safetensors.index.json") } }
    var singleFileFixture: String { get throws { try fixture(containing: "model.safetensors") } }

    @Test func missingShardIsNamed() throws {
        let dir = try copyOfFixture(try shardedFixture)
        defer { try? FileManager.default.removeItem(at: dir) }
        let shard = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix("model-") }.sorted().last!
        try FileManager.default.removeItem(at: dir.appendingPathComponent(shard))
        let message = try #require(loadError(dir))
        #expect(message.contains(shard) && message.contains("missing shard"))
    }

    @Test func truncatedFileNamesTheTensorOutOfRange() throws {
        let dir = try copyOfFixture(try singleFileFixture)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("model.safetensors")
        let data = try Data(contentsOf: file)
        try data.prefix(data.count - 100).write(to: file)
        let message = try #require(loadError(dir))
        #expect(message.contains("model.safetensors") && message.contains("tensor '") && message.contains("outside the file"))
    }

    @Test func headerLengthOutOfRange() throws {
        let dir = try copyOfFixture(try singleFileFixture)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("model.safetensors")
        var data = try Data(contentsOf: file)
        data.replaceSubrange(0..<8, with: [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0])
        try data.write(to: file)
        let message = try #require(loadError(dir))
        #expect(message.contains("header length") && message.contains("out of range"))
    }

    @Test func unknownArchitecture() throws {
        let dir = try copyOfFixture(try singleFileFixture)
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = dir.appendingPathComponent("config.json")
        var text = try String(contentsOf: config, encoding: .utf8)
        for name in Architecture.allCases.map(\.rawValue) { text = text.replacingOccurrences(of: name, with: "LlamaForCausalLM") }
        text = text.replacingOccurrences(of: "\"model_type\"", with: "\"original_model_type\"")
        try text.write(to: config, atomically: true, encoding: .utf8)
        let message = try #require(loadError(dir))
        #expect(message.contains("unknown architecture 'LlamaForCausalLM'"))
    }

    @Test func shapeThatDoesNotMatchTheConfig() throws {
        let dir = try copyOfFixture(try singleFileFixture)
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = dir.appendingPathComponent("config.json")
        let json = try JSONDecoder().decode(JSONValue.self, from: Data(contentsOf: config))
        guard case .object(var members) = json, let vocab = members["vocab_size"]?.intValue else { Issue.record("bad fixture config"); return }
        members["vocab_size"] = .number(Double(vocab + 1))
        try JSONEncoder().encode(JSONValue.object(members)).write(to: config)
        let message = try #require(loadError(dir))
        #expect(message.contains("model.embed_tokens.weight") && message.contains("does not match the config"))
    }

    @Test func missingTensorIsNamed() throws {
        let dir = try copyOfFixture(try singleFileFixture)
        defer { try? FileManager.default.removeItem(at: dir) }
        // Renaming a tensor in the header makes it "missing" while the file stays valid.
        let file = dir.appendingPathComponent("model.safetensors")
        var data = try Data(contentsOf: file)
        let needle = Data("model.norm.weight".utf8), replacement = Data("model.nrom.weight".utf8)
        let range = try #require(data.range(of: needle))
        data.replaceSubrange(range, with: replacement)
        try data.write(to: file)
        let message = try #require(loadError(dir))
        #expect(message.contains("model.norm.weight") && message.contains("missing"))
    }

    @Test func tokenOutsideTheVocabularyIsAnErrorNotACrash() throws {
        let model = try ModelLoader.loadCheckpoint(at: ReferenceFixture.committed[0].directory)
        #expect(throws: (any Error).self) {
            _ = try model.forward([SequenceInput(cache: model.makeCache(), tokens: [model.config.vocabSize])])
        }
    }
}
