import ExpertCache
import ExpertPrediction
import Foundation
import InferenceEngine
import MoEModels
import Runtime

/// Aggregate decode throughput and expert bytes read per generated
/// token at several concurrencies (`moe-serve bench batch`), through the real engine (continuous batching, expert-grouped
/// execution) and the expert cache under the memory budget. Each concurrency starts from a cold
/// cache in a fresh model, so the rows are comparable.
///
/// Only decoding is timed: the window opens when every sequence has its first token (the
/// prompts are prefilled and the cache has warmed on them) and closes with the last token;
/// bytes read and the hit rate are counted over the same window. Each row also reports the
/// window's steps up to the first sequence's end, the only ones that ran all N sequences
/// (`FullBatch`). Runs go round-robin over
/// the concurrencies (1, 8, 1, 8, ...) so that drift in the machine hits every row alike, and
/// each row reports the median run. `--compare-prefetch` measures every concurrency with
/// prefetch off and on (and auto, when the specification asks for auto), alternating within
/// each run, and reports the on/off ratios.
public struct BatchBenchmark: Sendable {
    /// How the model runs (model directory, memory budget, cache policy, prefetch, predictor).
    public var specification: RuntimeSpecification
    /// Concurrencies to measure.
    public var sequences = [1, 2, 4, 8]
    /// Tokens generated per sequence.
    public var genTokens = 64
    /// Prompt length per sequence (with `prompts`: at most this many tokens of each prompt).
    public var promptTokens = 16
    /// Prompts as text: run r gives sequence s prompt (r·N + s) mod count; nil: fixed pseudo-random
    /// token ids.
    public var prompts: [String]?
    /// Sampling temperature (0: greedy). Sequence s samples with seed `seed + s`, so prefetch on and
    /// off generate the same tokens.
    public var temperature: Float = 0
    /// Base seed of the sampled sequences.
    public var seed: UInt64 = 1
    /// Runs per concurrency (the median is reported).
    public var runs = 3
    /// Measure with prefetch off and on (and auto when `specification.prefetch` is auto),
    /// alternating, and report the ratios.
    public var comparePrefetch = false
    /// Lossy: skip a missing routed expert whose router weight is below this (docs/LOSSY.md).
    public var skipMissingBelow: Float?
    /// Lossy: run missing experts from the store's low-bit copies (docs/LOSSY.md).
    public var lowBitMisses = false
    /// Where each run's routing is recorded, step by step (`batch-<N>seq-prefetch-<mode>-run<R>.jsonl`;
    /// nil: not recorded). The recorder sees the same steps the cache does, prefill included.
    public var traceDirectory: URL?

    /// A benchmark of the model `specification` describes, with the default settings.
    public init(specification: RuntimeSpecification) { self.specification = specification }

    /// One concurrency's median run.
    public struct Row: Encodable, Sendable {
        public var sequences: Int
        public var prefetch: String
        public var decodedTokens: Int
        public var seconds: Double
        public var decodeTokensPerSecond: Double
        public var runTokensPerSecond: [Double]
        /// Each run's expert bytes read per decoded token, in run order (as `runTokensPerSecond`):
        /// what a cache policy changes, free of the disk's rate.
        public var runBytesReadPerToken: [Double]
        /// Each run's wait for expert reads per miss, in milliseconds (stall ÷ misses): the rate the
        /// disk gave that run. On the cloud disk of docs/BENCHMARKS.md it swung 0.30-1.03 ms from one
        /// run to the next, the same in every layer, so compare policies by the bytes they read.
        public var runStallMillisecondsPerMiss: [Double]
        /// Each run's share of the decode window in which at least one expert read ran (in run
        /// order; empty when every expert is resident). Below 1 while reads bound the speed, the
        /// disk stood idle that share of the time.
        public var runIOBusyShare: [Double]
        public var expertBytesReadPerToken: Double
        public var hitRate: Double
        /// Share of the decode window the engine spent waiting for expert reads.
        public var stallShare: Double
        /// The expert cache the plan left beside these sequences' KV caches (0: all resident).
        public var expertCacheBytes: Int
        /// Prefetched experts a demand then used, in time or late, of those prefetched (nil without prefetch).
        public var prefetchPrecision: Double?
        /// Prefetched experts that were resident when the demand came, of those prefetched.
        public var prefetchInTime: Double?
        /// Decode steps in the window.
        public var steps: Int
        /// Distinct experts a step ran per MoE layer (the union over the step's sequences; each
        /// is acquired, and read if missing, once for all of them).
        public var expertsPerLayerStep: Double
        /// Decode speed over the steps in which every sequence ran (`FullBatch`), median of the
        /// runs that had such steps, and each run's in run order (nil where it had none).
        public var fullBatchTokensPerSecond: Double?
        public var runFullBatchTokensPerSecond: [Double?]
        /// Those steps' expert bytes read per token, and how many steps they were (the median run's).
        public var fullBatchBytesReadPerToken: Double?
        public var fullBatchSteps: Int?
        /// Under prefetch auto: what the median run's duel had decided at its end, and each run's in run order.
        public var prefetchAuto: PrefetchSwitch.Summary?
        public var runPrefetchAuto: [PrefetchSwitch.Summary]?
        enum CodingKeys: String, CodingKey {
            case steps, expertsPerLayerStep = "union_experts_per_layer_step", prefetchAuto = "prefetch_auto", runPrefetchAuto = "runs_prefetch_auto"
            case sequences, prefetch, decodedTokens = "decoded_tokens", seconds, stallShare = "stall_share", expertCacheBytes = "expert_cache_bytes"
            case prefetchPrecision = "prefetch_precision", prefetchInTime = "prefetch_in_time"
            case decodeTokensPerSecond = "decode_tokens_per_second", runTokensPerSecond = "runs_tokens_per_second"
            case runBytesReadPerToken = "runs_expert_bytes_read_per_token", runStallMillisecondsPerMiss = "runs_stall_ms_per_miss"
            case runIOBusyShare = "runs_io_busy_share"
            case fullBatchTokensPerSecond = "full_batch_tokens_per_second", runFullBatchTokensPerSecond = "runs_full_batch_tokens_per_second"
            case fullBatchBytesReadPerToken = "full_batch_expert_bytes_read_per_token", fullBatchSteps = "full_batch_steps"
            case expertBytesReadPerToken = "expert_bytes_read_per_token", hitRate = "hit_rate"
        }
    }

    /// Prefetch on against off at one concurrency.
    public struct Comparison: Encodable, Sendable {
        public var sequences: Int
        /// Median on ÷ median off.
        public var speedup: Double
        /// On ÷ off within each run (the two measurements taken back to back).
        public var pairedSpeedups: [Double]
        /// With auto measured too: median auto ÷ the faster of median on and median off, and
        /// within each run auto ÷ the faster of that run's on and off.
        public var autoOverBest: Double?
        public var pairedAutoOverBest: [Double]?
        enum CodingKeys: String, CodingKey {
            case sequences, speedup, pairedSpeedups = "paired_speedups"
            case autoOverBest = "auto_over_best", pairedAutoOverBest = "paired_auto_over_best"
        }
    }

    /// The JSON `bench batch` prints.
    public struct Report: Encodable, Sendable {
        public var results: [Row]
        public var prefetchComparison: [Comparison]?
        enum CodingKeys: String, CodingKey { case results, prefetchComparison = "prefetch_comparison" }
    }

    /// One run's decode window.
    struct Measurement {
        var decodedTokens: Int
        var seconds: Double
        var bytesRead: Int
        var hits: Int
        var misses: Int
        var stallSeconds: Double
        /// Seconds of the window in which a read ran (nil without an offloading cache).
        var ioBusySeconds: Double?
        var prefetchesIssued: Int
        var prefetchHits: Int
        var prefetchesLate: Int
        var expertCacheBytes: Int
        var steps = 0
        /// The part of the window in which every sequence decoded (nil if none did together).
        var fullBatch: FullBatch?
        var moeLayers = 1
        var prefetchAuto: PrefetchSwitch.Summary?
        var tokensPerSecond: Double { Double(decodedTokens) / seconds }
        var bytesReadPerToken: Double { Double(bytesRead) / Double(decodedTokens) }
        var stallMillisecondsPerMiss: Double { misses > 0 ? 1e3 * stallSeconds / Double(misses) : 0 }
    }

    /// The decode window up to the first sequence's end: the steps that ran all N sequences.
    /// Sequences whose prompts prefilled in an earlier step start decoding earlier and end
    /// earlier, so the whole window's last steps run fewer than N (at 64 sequences and 16
    /// tokens, 59 a step on average) and measure a smaller batch than the row's.
    struct FullBatch {
        var decodedTokens: Int
        var seconds: Double
        var bytesRead: Int
        var steps: Int
        var tokensPerSecond: Double { Double(decodedTokens) / seconds }
    }

    /// Runs every concurrency; returns the JSON output and a table for people. Progress goes to stderr.
    public func run() throws -> (report: Report, table: String) {
            let counts = sequences
            guard !counts.isEmpty, counts.allSatisfy({ $0 >= 1 }) else { throw ToolError("--sequences: every count must be at least 1") }
            guard runs >= 1 else { throw ToolError("--runs: must be at least 1") }
            guard genTokens >= 2 else { throw ToolError("--gen-tokens: must be at least 2 (the first token ends the prefill)") }
            guard temperature >= 0 else { throw ToolError("--temperature: must be at least 0") }
            let texts = prompts
            if let texts, texts.isEmpty { throw ToolError("--prompts: no prompts") }
            let modes = comparePrefetch ? ["off", "on"] + (specification.prefetch == .auto ? ["auto"] : []) : [specification.prefetch.rawValue]
            struct Key: Hashable { var count: Int; var prefetch: String }
            var measured: [Key: [Measurement]] = [:]
            for run in 1...runs {
                for count in counts {
                    // Alternate which goes first, so that neither always follows the other.
                    for mode in run % 2 == 1 ? modes : modes.reversed() {
                        let m = try measure(sequences: count, prefetch: mode, run: run, texts: texts)
                        measured[Key(count: count, prefetch: mode), default: []].append(m)
                        printError(String(format: "bench batch: run %d/%d, %d sequences, prefetch %@: %.1f tok/s",
                                          run, runs, count, mode, m.tokensPerSecond))
                    }
                }
            }
            var rows: [Row] = []
            for mode in modes {
                for count in counts {
                    let all = measured[Key(count: count, prefetch: mode)]!
                    let median = all.sorted { $0.tokensPerSecond < $1.tokensPerSecond }[all.count / 2]
                    let fullBatches = all.compactMap(\.fullBatch).sorted { $0.tokensPerSecond < $1.tokensPerSecond }
                    let fullBatch = fullBatches.isEmpty ? nil : fullBatches[fullBatches.count / 2]
                    rows.append(Row(sequences: count, prefetch: mode, decodedTokens: median.decodedTokens, seconds: median.seconds,
                                    decodeTokensPerSecond: median.tokensPerSecond, runTokensPerSecond: all.map(\.tokensPerSecond),
                                    runBytesReadPerToken: all.map(\.bytesReadPerToken),
                                    runStallMillisecondsPerMiss: all.map(\.stallMillisecondsPerMiss),
                                    runIOBusyShare: all.compactMap { run in run.ioBusySeconds.map { min(1, $0 / run.seconds) } },
                                    expertBytesReadPerToken: median.bytesReadPerToken,
                                    hitRate: median.hits + median.misses > 0 ? Double(median.hits) / Double(median.hits + median.misses) : 1,
                                    stallShare: median.stallSeconds / median.seconds, expertCacheBytes: median.expertCacheBytes,
                                    prefetchPrecision: median.prefetchesIssued > 0 ? Double(median.prefetchHits + median.prefetchesLate) / Double(median.prefetchesIssued) : nil,
                                    prefetchInTime: median.prefetchesIssued > 0 ? Double(median.prefetchHits) / Double(median.prefetchesIssued) : nil,
                                    steps: median.steps,
                                    expertsPerLayerStep: Double(median.hits + median.misses) / Double(max(median.steps * median.moeLayers, 1)),
                                    fullBatchTokensPerSecond: fullBatch?.tokensPerSecond,
                                    runFullBatchTokensPerSecond: all.map { $0.fullBatch?.tokensPerSecond },
                                    fullBatchBytesReadPerToken: fullBatch.map { Double($0.bytesRead) / Double($0.decodedTokens) },
                                    fullBatchSteps: fullBatch?.steps,
                                    prefetchAuto: median.prefetchAuto,
                                    runPrefetchAuto: mode == "auto" ? all.compactMap(\.prefetchAuto) : nil))
                }
            }
            var table = "| sequences | prefetch | decode tokens/s (median of \(runs)) | runs | × one sequence | all running: tok/s (× one), steps | expert cache MiB | expert MB read / token | hit rate | stalled | prefetches used (in time) | union experts / layer / step |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
            for row in rows {
                let spread = row.runTokensPerSecond.map { String(format: "%.0f", $0) }.joined(separator: ", ")
                let base = rows.first { $0.prefetch == row.prefetch }!
                let allRunning = row.fullBatchTokensPerSecond.map { speed in
                    String(format: "%.1f (%@), %d", speed, base.fullBatchTokensPerSecond.map { String(format: "%.2f", speed / $0) } ?? "-",
                           row.fullBatchSteps ?? 0)
                } ?? "-"
                table += String(format: "| %d | %@ | %.1f | %@ | %.2f | %@ | %.1f | %.3f | %.3f | %.0f%% | %@ | %.1f |\n", row.sequences, row.prefetch,
                                row.decodeTokensPerSecond, spread, row.decodeTokensPerSecond / base.decodeTokensPerSecond, allRunning,
                                Double(row.expertCacheBytes) / 1048576, row.expertBytesReadPerToken / 1e6, row.hitRate,
                                100 * row.stallShare, row.prefetchPrecision.map { String(format: "%.2f (%.2f)", $0, row.prefetchInTime ?? 0) } ?? "-",
                                row.expertsPerLayerStep)
            }
            var comparisons: [Comparison] = []
            if comparePrefetch {
                table += specification.prefetch == .auto
                    ? "\n| sequences | prefetch on ÷ off (medians) | per run (on ÷ off, same run) | auto ÷ the faster (medians) | per run (auto ÷ the faster, same run) |\n|---|---|---|---|---|\n"
                    : "\n| sequences | prefetch on ÷ off (medians) | per run (on ÷ off, same run) |\n|---|---|---|\n"
                for count in counts {
                    let off = measured[Key(count: count, prefetch: "off")]!, on = measured[Key(count: count, prefetch: "on")]!
                    let paired = zip(on, off).map { $0.tokensPerSecond / $1.tokensPerSecond }
                    let medianOn = rows.first { $0.sequences == count && $0.prefetch == "on" }!.decodeTokensPerSecond
                    let medianOff = rows.first { $0.sequences == count && $0.prefetch == "off" }!.decodeTokensPerSecond
                    var comparison = Comparison(sequences: count, speedup: medianOn / medianOff, pairedSpeedups: paired)
                    if let auto = measured[Key(count: count, prefetch: "auto")] {
                        let medianAuto = rows.first { $0.sequences == count && $0.prefetch == "auto" }!.decodeTokensPerSecond
                        comparison.autoOverBest = medianAuto / max(medianOn, medianOff)
                        comparison.pairedAutoOverBest = zip(auto, zip(on, off)).map { $0.tokensPerSecond / max($1.0.tokensPerSecond, $1.1.tokensPerSecond) }
                    }
                    comparisons.append(comparison)
                    table += String(format: "| %d | %.2fx | %@ |", count, medianOn / medianOff,
                                    paired.map { String(format: "%.2f", $0) }.joined(separator: ", "))
                    if let best = comparison.autoOverBest, let pairs = comparison.pairedAutoOverBest {
                        table += String(format: " %.2fx | %@ |", best, pairs.map { String(format: "%.2f", $0) }.joined(separator: ", "))
                    }
                    table += "\n"
                }
                for row in rows where row.runPrefetchAuto != nil {
                    table += "\n"
                    for (run, auto) in row.runPrefetchAuto!.enumerated() {
                        table += String(format: "prefetch auto, %d sequences, run %d: leads %@ after %d rounds, last median on ÷ off %.3f, decode steps on %d / off %d\n",
                                        row.sequences, run + 1, auto.leader.rawValue, auto.rounds, auto.lastMedianRatio ?? .nan, auto.stepsOn, auto.stepsOff)
                    }
                }
            }
            return (Report(results: rows, prefetchComparison: comparePrefetch ? comparisons : nil), table)
    }

    /// The KV cache a batch runs with: the plan's share under a `--memory-budget` (a batch that
    /// needs more is refused), otherwise what the batch reserves, since nothing else bounds it
    /// (`--expert-cache` alone sizes only the experts).
    static func kvCacheBytes(plan: MemoryPlan?, batchNeeds: Int) -> Int {
        plan?.kvCacheBytes ?? batchNeeds
    }

    /// Opens a fresh runtime (cold cache), runs `sequences` greedy generations at once, and
    /// measures the decode window.
    private func measure(sequences count: Int, prefetch: String, run: Int, texts: [String]?) throws -> Measurement {
        var spec = specification
        spec.prefetch = PrefetchMode(rawValue: prefetch)!
        // Every sequence's KV cache comes first: a batch the KV budget cannot hold would run
        // partly one after another, and the row would not measure `count` at once.
        spec.maxSequences = count
        spec.contextTokens = promptTokens + genTokens + 1
        spec.kvShare = 1
        let runtime = try ModelRuntime.open(spec)
        defer { runtime.close() }
        // As a server does once it is up (`serve`): reads then find their buffers faulted in.
        if let warming = runtime.warmExpertBuffers(), warming.buffers > 0, run == 1 { printError("bench batch: \(warming.summary)") }
        runtime.cache?.skipMissingBelow = skipMissingBelow
        if lowBitMisses { try runtime.cache?.enableLowBitMisses() }
        if let sizing = runtime.readerSizing, run == 1 {
            printError("bench batch: reader threads sized to \(runtime.readerThreads ?? 0) by the disk probe: "
                + sizing.map { String(format: "depth %d %.2f GB/s", $0.depth, $0.bytesPerSecond / 1e9) }.joined(separator: ", "))
        }
        let transformer = runtime.model
        // The whole batch waits at once; its KV budget is set below, from what it reserves.
        var limits = Engine.defaultLimits(for: transformer, kvCacheBudgetBytes: 0, maxRunningSequences: count,
                                          maxWaitingRequests: max(64, count))
        let needed = count * Scheduler(limits: limits).reservation(promptTokens: promptTokens, maxTokens: genTokens)
        let kv = Self.kvCacheBytes(plan: runtime.plan, batchNeeds: needed)
        limits.kvCacheBudgetBytes = kv
        guard needed <= kv else {
            throw ToolError("the KV cache budget (\(formatBytes(kv))) holds fewer than \(count) sequences of \(promptTokens + genTokens) tokens (\(formatBytes(needed))): raise --memory-budget or lower --gen-tokens")
        }
        let recorder = try traceDirectory.map {
            try TraceRecorder(url: $0.appendingPathComponent("batch-\(count)seq-prefetch-\(prefetch)-run\(run).jsonl"),
                              layerCount: transformer.config.layerCount)
        }
        runtime.chain(recorder)
        let engine = Engine(model: transformer, limits: limits, decode: { _ in "" })
        engine.start()
        defer { engine.shutdown(grace: 0) }
        // Steps are read from the token callbacks, which the engine calls outside its lock.
        let window = DecodeWindow(sequences: count, steps: { engine.currentStatistics.steps }) {
            let statistics = runtime.cache?.statistics()
            return (statistics?.total ?? ExpertCacheCounters(), statistics?.ioBusySeconds)
        }
        let group = DispatchGroup()
        let failure = FailureBox()
        for sequence in 0..<count {
            // Distinct prompts so sequences route differently, as separate users would.
            let prompt: [Int]
            if let texts {
                guard let tokenizer = runtime.tokenizer else { throw ToolError("--prompts: the model has no tokenizer.json") }
                prompt = Array(tokenizer.encode(texts[((run - 1) * count + sequence) % texts.count]).prefix(promptTokens))
            } else {
                prompt = (0..<promptTokens).map { (sequence * 7919 + $0 * 104_729) % transformer.config.vocabSize }
            }
            var sampling = SamplingParameters()
            sampling.temperature = temperature
            sampling.seed = seed + UInt64(sequence)
            group.enter()
            _ = try engine.submit(GenerationRequest(prompt: prompt, maxTokens: genTokens, sampling: sampling)) { event in
                switch event {
                case .token: window.token(sequence: sequence)
                case .finished: window.finished(); group.leave()
                case .failed(let message): failure.set(message); group.leave()
                }
            }
        }
        group.wait()
        try recorder?.finish()
        if let message = failure.message { throw ToolError("a sequence failed: \(message)") }
        var measurement = try window.result()
        measurement.expertCacheBytes = runtime.cache?.statistics().budgetBytes ?? 0
        measurement.moeLayers = max(transformer.config.moeLayers.count, 1)
        measurement.prefetchAuto = runtime.prefetchSwitch?.summary
        return measurement
    }
}

/// The decode window of a concurrent run: opens at the last sequence's first token, counts
/// the tokens after it, and diffs the cache counters over it. Tokens arrive on the engine thread.
final class DecodeWindow: @unchecked Sendable {
    private let lock = NSLock()
    private let sequences: Int
    private let counters: () -> (ExpertCacheCounters, ioBusySeconds: Double?)
    private let steps: () -> Int
    private var started: Set<Int> = []
    private var opened: (time: UInt64, counters: ExpertCacheCounters, ioBusySeconds: Double?, steps: Int)?
    private var tokens = 0
    private var lastToken: UInt64 = 0
    private var lastSteps = 0
    /// The window's state when the first sequence finished: the steps before it ran every sequence.
    private var firstFinish: (time: UInt64, counters: ExpertCacheCounters, tokens: Int, steps: Int)?
    private var finishedBeforeOpening = false

    /// `steps` counts the engine's finished steps (the step emitting a token is not yet counted).
    init(sequences: Int, steps: @escaping () -> Int = { 0 }, counters: @escaping () -> (ExpertCacheCounters, ioBusySeconds: Double?)) {
        self.sequences = sequences
        self.steps = steps
        self.counters = counters
    }

    func token(sequence: Int) {
        let now = DispatchTime.now().uptimeNanoseconds
        lock.lock()
        defer { lock.unlock() }
        if !started.contains(sequence) {
            started.insert(sequence)
            if started.count == sequences {
                let (counted, busy) = counters()
                opened = (now, counted, busy, steps())
            }
        } else if opened != nil {
            tokens += 1
            lastToken = now
            lastSteps = steps()
        }
    }

    /// A sequence ended. The engine delivers a step's token events before its finished ones, so at
    /// the first finish the window holds exactly the steps in which every sequence decoded.
    func finished() {
        lock.lock()
        defer { lock.unlock() }
        guard firstFinish == nil, !finishedBeforeOpening else { return }
        guard opened != nil else { finishedBeforeOpening = true; return }
        firstFinish = (lastToken, counters().0, tokens, lastSteps)
    }

    func result() throws -> BatchBenchmark.Measurement {
        lock.lock()
        defer { lock.unlock() }
        guard let opened, tokens > 0 else { throw ToolError("no token was decoded after the prefill: raise --gen-tokens") }
        // Read at the end of the run: after the last token no step reads, so the busy time is the window's.
        let (end, endBusy) = counters()
        let busy = opened.ioBusySeconds.flatMap { start in endBusy.map { $0 - start } }
        let fullBatch = firstFinish.flatMap { close -> BatchBenchmark.FullBatch? in
            guard close.tokens > 0, close.time > opened.time else { return nil }
            return .init(decodedTokens: close.tokens, seconds: Double(close.time - opened.time) / 1e9,
                         bytesRead: close.counters.bytesRead - opened.counters.bytesRead,
                         steps: close.steps - opened.steps)
        }
        return .init(decodedTokens: tokens, seconds: Double(lastToken - opened.time) / 1e9,
                     bytesRead: end.bytesRead - opened.counters.bytesRead,
                     hits: end.hits - opened.counters.hits, misses: end.misses - opened.counters.misses,
                     stallSeconds: end.stallSeconds - opened.counters.stallSeconds, ioBusySeconds: busy,
                     prefetchesIssued: end.prefetchesIssued - opened.counters.prefetchesIssued,
                     prefetchHits: end.prefetchHits - opened.counters.prefetchHits,
                     prefetchesLate: end.prefetchesLate - opened.counters.prefetchesLate, expertCacheBytes: 0,
                     steps: lastSteps - opened.steps, fullBatch: fullBatch)
    }
}

/// The first failure message of a concurrent run.
final class FailureBox: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var message: String?
    func set(_ text: String) { lock.lock(); if message == nil { message = text }; lock.unlock() }
}
