import ArgumentParser
import ExpertCache
import ExpertPrediction
import Foundation
import InferenceEngine
import ModelFormats
import MoEModels
import Runtime
import Tokenization

/// How a command runs a model: the memory budget, the expert cache and its policy, and
/// prefetching, as flags. A thin front: it builds a `RuntimeSpecification` and the `Runtime`
/// library opens it. Shared by `generate` and the benchmarks (`serve` reads the same settings
/// through its configuration keys).
struct RuntimeOptions: ParsableArguments {
    @Option(name: .customLong("memory-budget"), help: "RAM for the whole process (its own runtime, dense weights, scratch, KV cache, expert cache), e.g. 512MiB or 4GiB; every unit is binary (4G = 4GB = 4GiB). The expert cache gets what remains. auto: start from half of MemAvailable (or of what the cgroup memory limit leaves, when tighter) and let the expert cache follow free memory and memory pressure.")
    var memoryBudget: String?
    @Option(name: .customLong("expert-cache"), help: "Bytes of experts to keep in RAM (overrides the share --memory-budget leaves them), e.g. 256MiB.")
    var expertCache: String?
    @Option(name: [.customLong("cache-policy"), .customLong("policy")], help: "Eviction policy: \(PolicyChoice.allCases.map(\.rawValue).joined(separator: ", ")).")
    /// The sequence-aware policy by default since session 18 (docs/expert-cache.md, "A policy
    /// that knows the sequences"): against the learned policy on the widened demo at a quarter of
    /// its experts, one sequence decoded 1.08-1.14x faster reading 11-23% fewer bytes per token,
    /// eight sequences 1.03-1.09x, 32 the same; a long-running server read 1-5% fewer bytes.
    /// The learned policy (session 16) had beaten LFU: a long-running server hit 0.80-0.82
    /// against LFU's 0.73-0.81. LFU (with aging), the default from session 4, had beaten LRU: with
    /// eight sequences each step touches ~20 of a layer's 32 experts, a cyclic pattern larger
    /// than a tight cache, which LRU evicts just before reuse (docs/PERFORMANCE.md).
    var cachePolicy: String = PolicyChoice.sequence.rawValue
    @Option(help: "Predictive prefetch of experts: on, off, or auto (decode-step blocks with and without it are timed and the faster kept).")
    var prefetch: String = "on"
    /// Two layers ahead with probes: fitted maps stay precise two layers out and wrap round to
    /// the next token's first layers, where the extra lead pays (docs/PREDICTOR.md, session 6).
    @Option(help: "Predictor configuration when prefetching: \(PredictorConfiguration.named.map(\.0).joined(separator: ", ")) (default: cross_layer_deep with predictor probes, else cross_layer).")
    var predictor: String?
    @Option(name: .customLong("kv-cache-type"), help: "How the KV cache stores keys and values: f16 (half the memory, as llama.cpp) or f32 (the reference).")
    var kvCacheType: String = KVPrecision.f16.rawValue
    @Option(name: .customLong("reader-threads"), help: "Concurrent expert reads (the disk queue depth), or auto: the smallest depth within 10% of the best bandwidth a short probe of the disk measures at 1, 2, 4, 8 and 16 (at least 2).")
    var readerThreads: String = "4"
    @Option(name: .customLong("io-engine"), help: "Engine of expert reads: auto (io_uring where the kernel allows it, else threads), io_uring, or threads (default: MOE_IO_ENGINE, else auto).")
    var ioEngine: String?
    /// Measured on the demo model (docs/PREDICTOR.md): the guesses that miss are mostly the
    /// low-probability ones for experts not in the cache, so without a floor only 32% (one
    /// sequence) and 61% (eight) of prefetched experts were then used, and with eight sequences
    /// prefetch cost 21% of throughput; at 0.1: 63% and 79%, and no loss. With selection probes
    /// the floor is on their calibrated probability of being used instead (default
    /// `PredictorConfiguration.minSelectionProbability`).
    @Option(name: .customLong("prefetch-min-probability"), help: "Prefetch only predicted experts whose probability reaches this (0 prefetches every candidate): the router's probability (default 0.1), or with selection probes the probability of being used (default 0.9).")
    var prefetchMinProbability: Float?
    @Option(name: .customLong("prefetch-budget"), help: "Prefetched, not yet used experts each layer may hold (0: no bound; default: the model's top-k).")
    var prefetchBudget: Int?
    @Option(name: .customLong("shadow-routing"), help: "While a decode step's misses load, run the next MoE layer's attention and router on this layer's partial output and prefetch what it chooses: on (the default) or off.")
    var shadowRouting: String = "on"
    @Option(name: .customLong("predictor-probes"), help: "Fitted cross-layer maps (safetensors from scripts/train_predictor_probes.py) that replace the next layers' routers in the cross-layer gate (default: the model directory's \(ExpertStore.predictorProbesFile) if it has one; none: the routers).")
    var predictorProbes: String?
    @Option(name: .customLong("expert-surrogates"), help: "Linear stand-ins for the experts' outputs (safetensors from scripts/fit_expert_surrogates.py) that the shadow uses (default: the model directory's \(ExpertSurrogates.fileName) if it has one; none: no surrogates).")
    var expertSurrogates: String?
    @Option(name: .customLong("surrogate-shadow"), help: "How the shadow uses expert surrogates: fill (the default: they stand in for the experts still loading), off, early (also a shadow as each layer routes), both (early, then fill) or confident (early, adding only experts of routing weight >= 0.1, then fill).")
    var surrogateShadow: String = "fill"
    @Option(name: .customLong("admission-window"), help: "Missing experts of one layer reserved and read at once (0: all of them, their room made as each read starts); a window reserves room when a miss is queued, as before session 31.")
    var admissionWindow: Int?
    @Option(name: .customLong("prefetch-reads"), help: "Prefetch reads that may run at once; demand reads always find a free reader when this is below --reader-threads (0: no separate bound).")
    var prefetchReads: Int = 0

    /// The specification these flags describe for the model at `url`, run with `maxSequences`
    /// concurrent sequences of up to `contextTokens`. `extraRuntimeBytes` adds to the process's
    /// own reservation what a caller will use beyond the model; `kvShare` caps the KV cache's
    /// share of what the fixed parts leave (1 gives it everything `maxSequences` sequences of
    /// `contextTokens` need, before the expert cache). Each bad value fails naming its flag.
    func specification(model url: URL, maxSequences: Int = 1, contextTokens: Int? = nil, extraRuntimeBytes: Int = 0,
                       kvShare: Double = 0.25) throws -> RuntimeSpecification {
        func flag<T>(_ name: String, _ body: () throws -> T) throws -> T {
            do { return try body() } catch let error as RuntimeError { throw CommandError("\(name): \(error)") }
        }
        var spec = RuntimeSpecification(model: url)
        spec.prefetch = try flag("--prefetch") { try RuntimeSpecification.prefetch(named: prefetch) }
        spec.policy = try flag("--cache-policy") { try RuntimeSpecification.policy(named: cachePolicy) }
        spec.kvPrecision = try flag("--kv-cache-type") { try RuntimeSpecification.kvPrecision(named: kvCacheType) }
        if let predictor, !RuntimeSpecification.predictorNames.contains(predictor) {
            throw CommandError("--predictor: unknown configuration '\(predictor)'; choose one of \(RuntimeSpecification.predictorNames.joined(separator: ", "))")
        }
        spec.predictor = predictor
        if let predictorProbes {
            spec.probes = RuntimeSpecification.probes(named: predictorProbes)
            if case let .file(file) = spec.probes, !FileManager.default.fileExists(atPath: file.path) {
                throw CommandError("--predictor-probes: no file at \(predictorProbes)")
            }
        }
        if readerThreads == "auto" {
            spec.readerThreads = 0
        } else {
            guard let threads = Int(readerThreads), threads >= 1 else { throw CommandError("--reader-threads: expected 1 or more or auto, got \(readerThreads)") }
            spec.readerThreads = threads
        }
        if let ioEngine {
            do { spec.ioEngine = try IOEngineChoice.parse(ioEngine) } catch { throw CommandError("--io-engine: \(error)") }
        }
        guard prefetchReads >= 0 else { throw CommandError("--prefetch-reads: expected 0 or more, got \(prefetchReads)") }
        spec.prefetchReads = prefetchReads
        if let admissionWindow {
            guard admissionWindow >= 0 else { throw CommandError("--admission-window: expected 0 or more, got \(admissionWindow)") }
            spec.admissionWindow = admissionWindow
        }
        if let prefetchMinProbability, !(0...1).contains(prefetchMinProbability) {
            throw CommandError("--prefetch-min-probability: expected a probability in 0...1, got \(prefetchMinProbability)")
        }
        spec.prefetchMinProbability = prefetchMinProbability
        guard shadowRouting == "on" || shadowRouting == "off" else { throw CommandError("--shadow-routing: expected on or off, got '\(shadowRouting)'") }
        spec.shadowRouting = shadowRouting == "on"
        if let expertSurrogates {
            spec.surrogates = RuntimeSpecification.probes(named: expertSurrogates)
            if case let .file(file) = spec.surrogates, !FileManager.default.fileExists(atPath: file.path) {
                throw CommandError("--expert-surrogates: no file at \(expertSurrogates)")
            }
        }
        spec.surrogateShadow = try flag("--surrogate-shadow") { try RuntimeSpecification.surrogateShadow(named: surrogateShadow) }
        if let prefetchBudget, prefetchBudget < 0 {
            throw CommandError("--prefetch-budget: expected 0 or more experts, got \(prefetchBudget)")
        }
        spec.prefetchBudgetExperts = prefetchBudget
        if memoryBudget?.lowercased() == "auto" {
            guard let available = MemoryReading.sample()?.availableBytes else { throw CommandError("--memory-budget auto: cannot read MemAvailable from /proc/meminfo") }
            spec.memoryBudgetBytes = AutoMemoryBudget.initialBudgetBytes(availableBytes: available)
            spec.autoMemoryBudget = true
        } else {
            spec.memoryBudgetBytes = try memoryBudget.map { try parseByteSize($0, option: "--memory-budget") }
        }
        spec.expertCacheBytes = try expertCache.map { try parseByteSize($0, option: "--expert-cache") }
        spec.maxSequences = maxSequences
        spec.contextTokens = contextTokens
        spec.extraRuntimeBytes = extraRuntimeBytes
        spec.kvShare = kvShare
        return spec
    }

    /// Opens the model at `url` under these flags (`checkedSpecification`, then `ModelRuntime.open`).
    func open(at url: URL, maxSequences: Int = 1, contextTokens: Int? = nil, extraRuntimeBytes: Int = 0,
              kvShare: Double = 0.25) throws -> ModelRuntime {
        try ModelRuntime.open(checkedSpecification(model: url, maxSequences: maxSequences, contextTokens: contextTokens,
                                                   extraRuntimeBytes: extraRuntimeBytes, kvShare: kvShare))
    }

    /// `specification`, with the combinations of flags the runtime cannot run refused in the
    /// flags' own words (what `open` and the benchmarks of ModelTools run).
    func checkedSpecification(model url: URL, maxSequences: Int = 1, contextTokens: Int? = nil, extraRuntimeBytes: Int = 0,
                              kvShare: Double = 0.25) throws -> RuntimeSpecification {
        let spec = try specification(model: url, maxSequences: maxSequences, contextTokens: contextTokens,
                                     extraRuntimeBytes: extraRuntimeBytes, kvShare: kvShare)
        if case .file = spec.probes {
            // Named here rather than in the runtime's words, as the flags were given.
            let predictor = spec.predictor ?? "cross_layer_deep"
            if let configuration = PredictorConfiguration.named.first(where: { $0.0 == predictor })?.1, !configuration.crossLayer {
                throw CommandError("--predictor-probes replaces the cross-layer gate, which --predictor \(predictor) does not use")
            }
        }
        return spec
    }
}

/// `generate`'s `stats`: the generation's own figures plus the memory plan, the expert
/// cache's statistics and the predictor's when they were used.
struct GenerateStatistics: Encodable {
    var generation: GenerationStats
    var memory: MemoryPlan?
    var expertCache: ExpertCacheStats?
    var prediction: PredictionSummary?
    /// What `--prefetch auto` had decided when generation ended.
    var prefetchAuto: PrefetchSwitch.Summary?
    /// The process's peak resident set (VmHWM) when the statistics were taken.
    var peakResidentBytes: Int? = ProcessMemory.peakResidentBytes()

    private enum CodingKeys: String, CodingKey {
        case memory, expertCache = "expert_cache", prediction, prefetchAuto = "prefetch_auto", peakResidentBytes = "peak_resident_bytes"
    }

    func encode(to encoder: Encoder) throws {
        try generation.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encodeIfPresent(memory, forKey: .memory)
        try container.encodeIfPresent(expertCache, forKey: .expertCache)
        try container.encodeIfPresent(prediction, forKey: .prediction)
        try container.encodeIfPresent(prefetchAuto, forKey: .prefetchAuto)
        try container.encodeIfPresent(peakResidentBytes, forKey: .peakResidentBytes)
    }
}

/// Recall and precision of the predictor, total and per layer.
struct PredictionSummary: Encodable {
    var predictor: String?
    var recall: Double
    var precision: Double
    var predicted: Int
    var used: Int
    var withdrawn: Int
    /// Runs of the next layer's shadow (`--shadow-routing on`) and the guesses they added.
    var shadowRuns: Int
    var shadowAdded: Int
    var perLayer: [[String: Double]]

    enum CodingKeys: String, CodingKey {
        case predictor, recall, precision, predicted, used, withdrawn, perLayer = "per_layer"
        case shadowRuns = "shadow_runs", shadowAdded = "shadow_added"
    }

    init(_ statistics: PredictionStatistics, predictor: String? = nil) {
        self.predictor = predictor
        let total = statistics.total
        recall = total.recall
        precision = total.precision
        predicted = total.predicted
        used = total.used
        withdrawn = total.withdrawn
        shadowRuns = total.shadowRuns
        shadowAdded = total.shadowAdded
        perLayer = statistics.perLayer.map { ["recall": $0.recall, "precision": $0.precision] }
    }
}
