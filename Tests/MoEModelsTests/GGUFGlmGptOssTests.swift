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
        let model = try ModelLoader.load(at: LlamaCppReference.root.appendingPathComponent(reference.file))
        #expect(model.config.architecture.rawValue == reference.architecture)
        model.kvPrecision = .f16 // llama-server's default KV cache type
        let vocab = model.config.vocabSize
        var logits: [Int: [Float]] = [:]
        for (index, prompt) in prompts.enumerated() {
            let cache = model.makeCache()
            cache.llamaCppFlashAttention = true
            cache.llamaCppRotaryAngles = true
            logits[index] = try model.forward([SequenceInput(cache: cache, tokens: prompt, allLogits: true)])[0]
        }
        var worst = 0.0
        var differences: [Double] = [] // every |Δ|, for the median printed below (less at the mercy of one near-tie than the maximum)
        for step in reference.steps {
            let all = try #require(logits[step.prompt])
            let row = Array(all[(step.length - 1) * vocab..<step.length * vocab])
            let maximum = row.max()!
            let logSum = Double(maximum) + log(row.reduce(0.0) { $0 + exp(Double($1 - maximum)) })
            let best = row.indices.max { row[$0] < row[$1] }!
            let nearTie = step.top[0][1] - step.top[1][1] < 0.05 && best == Int(step.top[1][0])
            #expect(best == Int(step.top[0][0]) || nearTie, "\(reference.file) prompt \(step.prompt) prefix \(step.length): top-1 \(best), llama.cpp \(Int(step.top[0][0])) (llama.cpp's top-2 gap \(step.top[0][1] - step.top[1][1]))")
            for entry in step.top {
                let difference = abs(Double(row[Int(entry[0])]) - logSum - entry[1])
                worst = max(worst, difference)
                differences.append(difference)
                #expect(difference <= 0.1, "\(reference.file) prompt \(step.prompt) prefix \(step.length) token \(Int(entry[0])): Δ logprob \(difference)")
            }
        }
        print("\(reference.file): \(reference.steps.count) prefixes, max |Δ logprob| over llama.cpp's top 5 = \(String(format: "%.4f", worst)), median \(String(format: "%.4f", differences.sorted()[differences.count / 2]))")
    }

    /// `pack FILE.gguf STORE`: the store computes exactly the file's logits.
    @Test(arguments: (Self.reference?.models ?? []).map(\.file))
    func packedStoreGivesTheFilesLogits(file: String) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-glm-gptoss-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let url = LlamaCppReference.root.appendingPathComponent(file)
        let storeURL = directory.appendingPathComponent("store")
        var packer = ExpertStorePacker()
        packer.dtype = .ggml
        _ = try packer.pack(gguf: GGUFModel(url: url), to: storeURL)
        #expect(try ExpertStore(url: storeURL).verify().isEmpty)
        let tokens = [5, 300, 42, 7, 1000, 12, 13, 14]
        let fromFile = try ModelLoader.load(at: url), fromStore = try ModelLoader.load(at: storeURL)
        let a = try fromFile.forward([SequenceInput(cache: fromFile.makeCache(), tokens: tokens, allLogits: true)])[0]
        let b = try fromStore.forward([SequenceInput(cache: fromStore.makeCache(), tokens: tokens, allLogits: true)])[0]
        #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "\(file): the store's logits differ from the file's")
    }
}
