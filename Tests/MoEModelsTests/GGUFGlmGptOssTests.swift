import Foundation
import Testing
import ModelFormats
@testable import MoEModels

/// llama.cpp's `glm4moe` and `gpt-oss` GGUF files (converted by llama.cpp's converter and
/// quantised by `llama-quantize`, `scripts/gguf/make_glm_gptoss_fixtures.py`) against llama.cpp's
/// next-token distributions in Tests/Fixtures/gguf/glm-gptoss-reference.json, with the same
/// criterion and the same emulation of llama.cpp's arithmetic as `GGUFLlamaCppTests`.
@Suite struct GGUFGlmGptOssTests {
    static let reference: LlamaCppReference? = try? JSONDecoder().decode(
        LlamaCppReference.self, from: Data(contentsOf: LlamaCppReference.root.appendingPathComponent("glm-gptoss-reference.json")))

    @Test func referencesArePresent() throws {
        let reference = try #require(Self.reference)
        #expect(Set(reference.models.map(\.architecture)) == [Architecture.glm4Moe.rawValue, Architecture.gptOss.rawValue])
    }

    /// The configuration llama.cpp's loader reads: the appended next-token-prediction layer
    /// left out, one leading dense layer, partial rotary, sigmoid routing scaled by 2.5.
    @Test func glmConfigurationIsLlamaCpps() throws {
        let gguf = try GGUFModel(url: LlamaCppReference.root.appendingPathComponent("glm4moe-Q8_0.gguf"))
        let config = gguf.config
        #expect(gguf.metadata["glm4moe.block_count"]?.intValue == 4)
        #expect(config.layerCount == 3)
        #expect(config.moeLayers == [1, 2])
        #expect(config.rope.partialRotaryFactor == 0.5)
        #expect(config.routedScalingFactor == 2.5)
        #expect(config.normTopKProb)
        #expect(config.qkNormPerHead && config.attentionBias)
        #expect(config.sharedExpertIntermediateSize == config.expertIntermediateSize)
        // The skipped layer's tensors are never loaded, so they are not resident bytes.
        let mtpBytes = gguf.tensors.values.map(\.info).filter { $0.name.hasPrefix("blk.3.") && !$0.name.contains("_exps.") }.reduce(0) { $0 + $1.byteCount }
        let allDense = gguf.tensors.values.map(\.info).filter { !$0.name.contains("_exps.") }.reduce(0) { $0 + $1.byteCount }
        #expect(mtpBytes > 0)
        #expect(gguf.denseByteCount == allDense - mtpBytes)
    }

    /// At every prefix of every prompt: llama.cpp's top-1 (or its second where its top two are
    /// within 0.05 nats) and each of its top-5 log-probabilities within 0.1.
    @Test(arguments: Self.reference?.models ?? [])
    func nextTokenDistributionMatchesLlamaCpp(model reference: LlamaCppReference.Model) throws {
        let prompts = try #require(Self.reference).prompts
        let result = try LlamaCppReference.compare(file: LlamaCppReference.root.appendingPathComponent(reference.file),
                                                   architecture: reference.architecture, steps: reference.steps, prompts: prompts, bound: 0.1)
        LlamaCppReference.report(reference.file, prefixes: reference.steps.count, result)
    }

    /// `pack FILE.gguf STORE`: the store computes exactly the file's logits.
    @Test(arguments: (Self.reference?.models ?? []).map(\.file))
    func packedStoreGivesTheFilesLogits(file: String) throws {
        let (a, b) = try LlamaCppReference.fileAndPackedStoreLogits(file)
        #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "\(file): the store's logits differ from the file's")
    }
}
