import Foundation
import Testing
import ModelFormats
@testable import MoEModels

/// GGUF files made by llama.cpp's own converter and `llama-quantize`, against llama.cpp's
/// next-token distributions (`llama-server` `/completion` with `n_probs: 5`), recorded by
/// `scripts/gguf/make_gguf_fixtures.py` in Tests/Fixtures/gguf/reference.json.
struct LlamaCppReference: Decodable {
    struct Model: Decodable, CustomTestStringConvertible, Sendable {
        let file: String
        let architecture: String
        let type: String
        let steps: [Step]
        var testDescription: String { file }
    }

    struct Step: Decodable, Sendable {
        let prompt: Int
        let length: Int
        /// llama.cpp's top 5 as [id, logprob].
        let top: [[Double]]
    }

    let prompts: [[Int]]
    let models: [Model]

    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/gguf")

    /// `pack FILE.gguf STORE` (ggml blocks kept) into a temporary directory, checked by `verify`, and the
    /// logits of one token sequence read from the file and from the store: (file, store).
    static func fileAndPackedStoreLogits(_ file: String) throws -> (file: [Float], store: [Float]) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-pack-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let url = root.appendingPathComponent(file)
        let storeURL = directory.appendingPathComponent("store")
        var packer = ExpertStorePacker()
        packer.dtype = .ggml
        _ = try packer.pack(gguf: GGUFModel(url: url), to: storeURL)
        #expect(try ExpertStore(url: storeURL).verify().isEmpty)
        let tokens = [5, 300, 42, 7, 1000, 12, 13, 14]
        let fromFile = try ModelLoader.load(at: url), fromStore = try ModelLoader.load(at: storeURL)
        let a = try fromFile.forward([SequenceInput(cache: fromFile.makeCache(), tokens: tokens, allLogits: true)])[0]
        let b = try fromStore.forward([SequenceInput(cache: fromStore.makeCache(), tokens: tokens, allLogits: true)])[0]
        return (a, b)
    }
    static let committed: LlamaCppReference? = try? JSONDecoder().decode(
        LlamaCppReference.self, from: Data(contentsOf: root.appendingPathComponent("reference.json")))

    /// The comparison every llama.cpp-reference test makes: `file` run with llama-server's arithmetic
    /// emulated (f16 KV cache, its CPU flash attention with an f16 accumulator, its float32 rotary
    /// angle recurrence) over every prompt, against llama.cpp's top 5 at each recorded prefix. With a
    /// `bound`, expects the file to read as `architecture`, llama.cpp's top-1 (or its second where its
    /// top two are within 0.05 nats) and every |Δ log-prob| within the bound; `note` hears each
    /// prompt's largest difference and each top-1 disagreement. Returns the largest and the median |Δ|.
    static func compare(file: URL, architecture: String, steps: [Step], prompts: [[Int]], bound: Double?,
                        note: (String) -> Void = { _ in }) throws -> (worst: Double, median: Double) {
        let model = try ModelLoader.load(at: file)
        if bound != nil { #expect(model.config.architecture.rawValue == architecture) }
        model.kvPrecision = .f16 // llama-server's default KV cache type
        let vocab = model.config.vocabSize
        let name = file.lastPathComponent
        var differences: [Double] = []
        for (index, prompt) in prompts.enumerated() {
            let cache = model.makeCache()
            cache.llamaCppFlashAttention = true // llama-server's CPU flash attention (f16 accumulator)
            cache.llamaCppRotaryAngles = true // llama.cpp's float32 rotary angle recurrence
            let all = try model.forward([SequenceInput(cache: cache, tokens: prompt, allLogits: true)])[0]
            var promptWorst = (0.0, 0)
            for step in steps where step.prompt == index {
                let row = Array(all[(step.length - 1) * vocab..<step.length * vocab])
                let maximum = row.max()!
                let logSum = Double(maximum) + log(row.reduce(0.0) { $0 + exp(Double($1 - maximum)) })
                let best = row.indices.max { row[$0] < row[$1] }!
                let nearTie = step.top[0][1] - step.top[1][1] < 0.05 && best == Int(step.top[1][0])
                if best != Int(step.top[0][0]) { note("p\(index)@\(step.length):top1(\(best)≠\(Int(step.top[0][0])))") }
                if bound != nil {
                    #expect(best == Int(step.top[0][0]) || nearTie, "\(name) prompt \(index) prefix \(step.length): top-1 \(best), llama.cpp \(Int(step.top[0][0])) (llama.cpp's top-2 gap \(step.top[0][1] - step.top[1][1]))")
                }
                for entry in step.top {
                    let difference = abs(Double(row[Int(entry[0])]) - logSum - entry[1])
                    differences.append(difference)
                    if difference > promptWorst.0 { promptWorst = (difference, step.length) }
                    if let bound {
                        #expect(difference <= bound, "\(name) prompt \(index) prefix \(step.length) token \(Int(entry[0])): Δ logprob \(difference)")
                    }
                }
            }
            note("p\(index):\(String(format: "%.3f", promptWorst.0))@\(promptWorst.1)")
        }
        #expect(!differences.isEmpty, "\(name): no recorded prefix")
        let sorted = differences.sorted()
        return (sorted.last ?? 0, sorted.isEmpty ? 0 : sorted[sorted.count / 2])
    }

    /// Prints `compare`'s figures as every reference test does.
    static func report(_ file: String, prefixes: Int, _ result: (worst: Double, median: Double)) {
        print("\(file): \(prefixes) prefixes, max |Δ logprob| over llama.cpp's top 5 = \(String(format: "%.4f", result.worst)), median \(String(format: "%.4f", result.median))")
    }
}

@Suite struct GGUFLlamaCppTests {
    @Test func referencesArePresent() throws {
        let reference = try #require(LlamaCppReference.committed)
        // The architectures the GGUF reader maps so far (llama.cpp's qwen3moe, qwen2moe, olmoe and llama with experts).
        let gguf: Set<Architecture> = [.qwen3Moe, .qwen2Moe, .olmoe, .mixtral]
        #expect(Set(reference.models.map(\.architecture)) == Set(gguf.map(\.rawValue)))
        #expect(Set(reference.models.map(\.type)).isSuperset(of: ["Q8_0", "Q6_K", "Q4_K_M", "Q4_0"]))
    }

    /// At every prefix of every prompt: the same top-1 token as llama.cpp, and each of
    /// llama.cpp's top-5 log-probabilities within 0.1 (the issue's criterion).
    ///
    /// The model runs with llama.cpp's arithmetic where it differs from ours by more than the
    /// order of float32 sums: 8-bit activations (`GGMLActivations`, with Q8_1's float16 block
    /// sums for Q4_1/Q5_1), the f16 KV cache and CPU flash attention (`GGMLFlashAttention`),
    /// RMSNorm's double-precision sum (`Ops.rmsNorm`), and RoPE's float32 angle recurrence
    /// (`KVCache.llamaCppRotaryAngles`). Each of these moved some file by 0.03-1 nats. Q8_0 and
    /// Q6_K products also sum in ggml's own order (eight float lanes of four products each,
    /// `CKernels/q8_0.c`, `kquants.c`): qwen3moe-Q6_K's one prefix at 1.06 (a layer-1 router choice
    /// 0.004 apart that followed the last bits of a Q6_K product) is now 0.079, Q4_K_M 0.083 → 0.005.
    ///
    /// Documented exception, measured on these fixtures: a near-tie: when llama.cpp's own top two
    /// are within 0.05 nats, picking its second is accepted (gaps 0.002-0.041: below what float32 vs
    /// llama.cpp's mixed float16/int8 arithmetic can order). Every file is held to the issue's 0.1.
    static let knownGaps: [String: Double] = [:]

    @Test(arguments: LlamaCppReference.committed?.models ?? [])
    func nextTokenDistributionMatchesLlamaCpp(model reference: LlamaCppReference.Model) throws {
        let prompts = try #require(LlamaCppReference.committed).prompts
        let result = try LlamaCppReference.compare(file: LlamaCppReference.root.appendingPathComponent(reference.file),
                                                   architecture: reference.architecture, steps: reference.steps, prompts: prompts,
                                                   bound: Self.knownGaps[reference.file] ?? 0.1)
        LlamaCppReference.report(reference.file, prefixes: reference.steps.count, result)
    }

    /// The Q3_K and IQ4_XS files (`scripts/gguf/make_q3k_iq4xs_fixtures.py`: the qwen3moe checkpoint
    /// above quantised `Q3_K_M` and `IQ4_XS`), recorded apart in q3k-iq4xs-reference.json.
    static let superBlockFixtures: LlamaCppReference? = try? JSONDecoder().decode(
        LlamaCppReference.self, from: Data(contentsOf: LlamaCppReference.root.appendingPathComponent("q3k-iq4xs-reference.json")))

    @Test func superBlockReferencesArePresent() throws {
        let reference = try #require(Self.superBlockFixtures)
        #expect(reference.models.map(\.type) == ["Q3_K_M", "IQ4_XS"])
        #expect(reference.prompts == LlamaCppReference.committed?.prompts)
    }

    /// As `nextTokenDistributionMatchesLlamaCpp`, for the Q3_K and IQ4_XS files: the same top-1 (or a
    /// near-tie) and every |Δ log-prob| within the issue's 0.1.
    @Test(arguments: Self.superBlockFixtures?.models ?? [])
    func superBlockTypesMatchLlamaCpp(model reference: LlamaCppReference.Model) throws {
        let prompts = try #require(Self.superBlockFixtures).prompts
        let result = try LlamaCppReference.compare(file: LlamaCppReference.root.appendingPathComponent(reference.file),
                                                   architecture: reference.architecture, steps: reference.steps, prompts: prompts,
                                                   bound: Self.knownGaps[reference.file] ?? 0.1)
        LlamaCppReference.report(reference.file, prefixes: reference.steps.count, result)
    }

    /// The types no other file holds (`scripts/gguf/make_more_type_fixtures.py`): the qwen3moe
    /// checkpoint quantised `Q2_K` and `Q5_K_M`, the mixtral one kept whole as `BF16` and `F16`,
    /// recorded apart in more-types-reference.json.
    static let moreTypeFixtures: LlamaCppReference? = try? JSONDecoder().decode(
        LlamaCppReference.self, from: Data(contentsOf: LlamaCppReference.root.appendingPathComponent("more-types-reference.json")))

    @Test func moreTypeReferencesArePresent() throws {
        let reference = try #require(Self.moreTypeFixtures)
        #expect(reference.models.map(\.type) == ["Q2_K", "Q5_K_M", "BF16", "F16"])
        #expect(reference.prompts == LlamaCppReference.committed?.prompts)
    }

    /// As `nextTokenDistributionMatchesLlamaCpp`, for the Q2_K, Q5_K, BF16 and F16 files.
    @Test(arguments: Self.moreTypeFixtures?.models ?? [])
    func moreTypesMatchLlamaCpp(model reference: LlamaCppReference.Model) throws {
        let prompts = try #require(Self.moreTypeFixtures).prompts
        let result = try LlamaCppReference.compare(file: LlamaCppReference.root.appendingPathComponent(reference.file),
                                                   architecture: reference.architecture, steps: reference.steps, prompts: prompts,
                                                   bound: Self.knownGaps[reference.file] ?? 0.1)
        LlamaCppReference.report(reference.file, prefixes: reference.steps.count, result)
    }

    /// `pack FILE.gguf STORE` of those files — F16 routed experts included, kept as float16 — computes
    /// exactly the file's logits.
    @Test(arguments: (Self.moreTypeFixtures?.models ?? []).map(\.file))
    func moreTypesPackBitForBit(file: String) throws {
        let (a, b) = try LlamaCppReference.fileAndPackedStoreLogits(file)
        if file == "qwen3moe-Q2_K.gguf" {
            // Known difference: this file's Q4_0 experts are converted to the q4 layout when read from the
            // file (`GGMLQ4_0`, VNNI kernels) but stay `.ggml(.q4_0)` blocks in a store (the portable
            // ggml block kernel), which sums in another order: the same values, last bits apart.
            let worst = zip(a, b).map { abs($0 - $1) }.max() ?? 0, scale = a.map(abs).max() ?? 1
            #expect(worst <= 1e-4 * scale, "\(file): the store's logits differ from the file's by \(worst)")
        } else {
            #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "\(file): the store's logits differ from the file's")
        }
    }

    /// A model split by gguf-py's writer (`scripts/gguf/split_gguf.py`, as llama-gguf-split
    /// does), opened by its first part, gives the logits of the single file, bit for bit.
    @Test func splitFilesGiveTheSameLogits() throws {
        let single = try ModelLoader.load(at: LlamaCppReference.root.appendingPathComponent("mixtral-Q4_0.gguf"))
        let split = try ModelLoader.load(at: LlamaCppReference.root.appendingPathComponent("split/mixtral-Q4_0-00001-of-00002.gguf"))
        let tokens = [5, 300, 42, 7, 1000]
        let a = try single.forward([SequenceInput(cache: single.makeCache(), tokens: tokens, allLogits: true)])[0]
        let b = try split.forward([SequenceInput(cache: split.makeCache(), tokens: tokens, allLogits: true)])[0]
        #expect(a == b)
        #expect(throws: (any Error).self) {
            try ModelLoader.load(at: LlamaCppReference.root.appendingPathComponent("split/mixtral-Q4_0-00002-of-00002.gguf"))
        }
    }
}
