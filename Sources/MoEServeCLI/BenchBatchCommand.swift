import ArgumentParser
import ExpertCache
import Foundation
import InferenceEngine
import MoEModels
import Runtime

/// `moe-serve bench batch`: aggregate decode throughput and expert bytes read per generated
/// token at several concurrencies, through the real engine (continuous batching, expert-grouped
/// execution) and the expert cache under the memory budget. Each concurrency starts from a cold
/// cache in a fresh model, so the rows are comparable.
///
/// Only decoding is timed: the window opens when every sequence has its first token (the
/// prompts are prefilled and the cache has warmed on them) and closes with the last token;
/// bytes read and the hit rate are counted over the same window. Runs go round-robin over
/// the concurrencies (1, 8, 1, 8, ...) so that drift in the machine hits every row alike, and
/// each row reports the median run. `--compare-prefetch` measures every concurrency with
/// prefetch off and on, alternating within each run, and reports the on/off ratios.
struct BenchBatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "batch", abstract: "Decode throughput at several concurrencies (JSON on stdout, table on stderr).")

    @OptionGroup var model: ModelOption
    @Option(help: "Concurrencies to measure, e.g. 1,2,4,8.") var sequences = "1,2,4,8"
    @Option(name: .customLong("gen-tokens"), help: "Tokens generated per sequence.") var genTokens = 64
    @Option(name: .customLong("prompt-tokens"), help: "Prompt length per sequence (with --prompts: at most this many tokens of each prompt).")
    var promptTokens = 16
    @Option(help: "File with one JSON string per line, each a prompt (e.g. scripts/prompts/python.jsonl). Run r gives sequence s prompt (r·N + s) mod count; without it, prompts are fixed pseudo-random token ids.")
    var prompts: String?
    @Option(help: "Sampling temperature (0: greedy). Sequence s samples with seed --seed + s, so prefetch on and off generate the same tokens.")
    var temperature: Float = 0
    @Option(help: "Base seed of the sampled sequences.") var seed: UInt64 = 1
    @Option(help: "Runs per concurrency (the median is reported).") var runs = 3
    @Flag(name: .customLong("compare-prefetch"), help: "Measure with prefetch off and on, alternating, and report the ratio.")
    var comparePrefetch = false
    @OptionGroup var runtimeOptions: RuntimeOptions
    @OptionGroup var lossy: LossyOptions

    struct Row: Encodable {
        var sequences: Int
        var prefetch: String
        var decodedTokens: Int
        var seconds: Double
        var decodeTokensPerSecond: Double
        var runTokensPerSecond: [Double]
        var expertBytesReadPerToken: Double
        var hitRate: Double
        /// Share of the decode window the engine spent waiting for expert reads.
        var stallShare: Double
        /// The expert cache the plan left beside these sequences' KV caches (0: all resident).
        var expertCacheBytes: Int
        /// Prefetched experts a demand then used, in time or late, of those prefetched (nil without prefetch).
        var prefetchPrecision: Double?
        /// Prefetched experts that were resident when the demand came, of those prefetched.
        var prefetchInTime: Double?
        enum CodingKeys: String, CodingKey {
            case sequences, prefetch, decodedTokens = "decoded_tokens", seconds, stallShare = "stall_share", expertCacheBytes = "expert_cache_bytes"
            case prefetchPrecision = "prefetch_precision", prefetchInTime = "prefetch_in_time"
            case decodeTokensPerSecond = "decode_tokens_per_second", runTokensPerSecond = "runs_tokens_per_second"
            case expertBytesReadPerToken = "expert_bytes_read_per_token", hitRate = "hit_rate"
        }
    }

    /// Prefetch on against off at one concurrency.
    struct Comparison: Encodable {
        var sequences: Int
        /// Median on ÷ median off.
        var speedup: Double
        /// On ÷ off within each run (the two measurements taken back to back).
        var pairedSpeedups: [Double]
        enum CodingKeys: String, CodingKey { case sequences, speedup, pairedSpeedups = "paired_speedups" }
    }

    struct Report: Encodable {
        var results: [Row]
        var prefetchComparison: [Comparison]?
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
        var prefetchesIssued: Int
        var prefetchHits: Int
        var prefetchesLate: Int
        var expertCacheBytes: Int
        var tokensPerSecond: Double { Double(decodedTokens) / seconds }
    }

    func run() throws {
        try reportingErrors {
            let counts = try parseTokenList(sequences, option: "--sequences")
            guard counts.allSatisfy({ $0 >= 1 }) else { throw CommandError("--sequences: every count must be at least 1") }
            guard runs >= 1 else { throw CommandError("--runs: must be at least 1") }
            guard genTokens >= 2 else { throw CommandError("--gen-tokens: must be at least 2 (the first token ends the prefill)") }
            guard temperature >= 0 else { throw CommandError("--temperature: must be at least 0") }
            let texts = try prompts.map { try readPromptFile($0) }
            if let texts, texts.isEmpty { throw CommandError("\(prompts!): no prompts") }
            let modes = comparePrefetch ? ["off", "on"] : [runtimeOptions.prefetch]
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
                    rows.append(Row(sequences: count, prefetch: mode, decodedTokens: median.decodedTokens, seconds: median.seconds,
                                    decodeTokensPerSecond: median.tokensPerSecond, runTokensPerSecond: all.map(\.tokensPerSecond),
                                    expertBytesReadPerToken: Double(median.bytesRead) / Double(median.decodedTokens),
                                    hitRate: median.hits + median.misses > 0 ? Double(median.hits) / Double(median.hits + median.misses) : 1,
                                    stallShare: median.stallSeconds / median.seconds, expertCacheBytes: median.expertCacheBytes,
                                    prefetchPrecision: median.prefetchesIssued > 0 ? Double(median.prefetchHits + median.prefetchesLate) / Double(median.prefetchesIssued) : nil,
                                    prefetchInTime: median.prefetchesIssued > 0 ? Double(median.prefetchHits) / Double(median.prefetchesIssued) : nil))
                }
            }
            var table = "| sequences | prefetch | decode tokens/s (median of \(runs)) | runs | × one sequence | expert cache MiB | expert MB read / token | hit rate | stalled | prefetches used (in time) |\n|---|---|---|---|---|---|---|---|---|---|\n"
            for row in rows {
                let spread = row.runTokensPerSecond.map { String(format: "%.0f", $0) }.joined(separator: ", ")
                let base = rows.first { $0.prefetch == row.prefetch }!
                table += String(format: "| %d | %@ | %.1f | %@ | %.2f | %.1f | %.3f | %.3f | %.0f%% | %@ |\n", row.sequences, row.prefetch,
                                row.decodeTokensPerSecond, spread, row.decodeTokensPerSecond / base.decodeTokensPerSecond,
                                Double(row.expertCacheBytes) / 1048576, row.expertBytesReadPerToken / 1e6, row.hitRate,
                                100 * row.stallShare, row.prefetchPrecision.map { String(format: "%.2f (%.2f)", $0, row.prefetchInTime ?? 0) } ?? "-")
            }
            var comparisons: [Comparison] = []
            if comparePrefetch {
                table += "\n| sequences | prefetch on ÷ off (medians) | per run (on ÷ off, same run) |\n|---|---|---|\n"
                for count in counts {
                    let off = measured[Key(count: count, prefetch: "off")]!, on = measured[Key(count: count, prefetch: "on")]!
                    let paired = zip(on, off).map { $0.tokensPerSecond / $1.tokensPerSecond }
                    let medianOn = rows.first { $0.sequences == count && $0.prefetch == "on" }!.decodeTokensPerSecond
                    let medianOff = rows.first { $0.sequences == count && $0.prefetch == "off" }!.decodeTokensPerSecond
                    comparisons.append(Comparison(sequences: count, speedup: medianOn / medianOff, pairedSpeedups: paired))
                    table += String(format: "| %d | %.2fx | %@ |\n", count, medianOn / medianOff,
                                    paired.map { String(format: "%.2f", $0) }.joined(separator: ", "))
                }
            }
            FileHandle.standardError.write(Data(table.utf8))
            try printJSON(Report(results: rows, prefetchComparison: comparePrefetch ? comparisons : nil))
        }
    }

    /// Opens a fresh runtime (cold cache), runs `sequences` greedy generations at once, and
    /// measures the decode window.
    private func measure(sequences count: Int, prefetch: String, run: Int, texts: [String]?) throws -> Measurement {
        var runtimeOptions = self.runtimeOptions
        runtimeOptions.prefetch = prefetch
        // Every sequence's KV cache comes first: a batch the KV budget cannot hold would run
        // partly one after another, and the row would not measure `count` at once.
        let runtime = try runtimeOptions.open(at: try model.resolvedURL(), maxSequences: count,
                                              contextTokens: promptTokens + genTokens + 1, kvShare: 1)
        defer { runtime.close() }
        lossy.apply(to: runtime)
        let transformer = runtime.model
        let kv = runtime.plan?.kvCacheBytes ?? (64 << 20)
        let limits = Engine.defaultLimits(for: transformer, kvCacheBudgetBytes: kv, maxRunningSequences: count)
        let needed = count * Scheduler(limits: limits).reservation(promptTokens: promptTokens, maxTokens: genTokens)
        guard needed <= kv else {
            throw CommandError("the KV cache budget (\(formatBytes(kv))) holds fewer than \(count) sequences of \(promptTokens + genTokens) tokens (\(formatBytes(needed))): raise --memory-budget or lower --gen-tokens")
        }
        let engine = Engine(model: transformer, limits: limits, decode: { _ in "" })
        engine.start()
        defer { engine.shutdown(grace: 0) }
        let window = DecodeWindow(sequences: count) {
            runtime.cache?.statistics().total ?? ExpertCacheCounters()
        }
        let group = DispatchGroup()
        let failure = FailureBox()
        for sequence in 0..<count {
            // Distinct prompts so sequences route differently, as separate users would.
            let prompt: [Int]
            if let texts {
                guard let tokenizer = runtime.tokenizer else { throw CommandError("--prompts: the model has no tokenizer.json") }
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
                case .finished: group.leave()
                case .failed(let message): failure.set(message); group.leave()
                }
            }
        }
        group.wait()
        if let message = failure.message { throw CommandError("a sequence failed: \(message)") }
        var measurement = try window.result()
        measurement.expertCacheBytes = runtime.cache?.statistics().budgetBytes ?? 0
        return measurement
    }
}

/// The decode window of a concurrent run: opens at the last sequence's first token, counts
/// the tokens after it, and diffs the cache counters over it. Tokens arrive on the engine thread.
final class DecodeWindow: @unchecked Sendable {
    private let lock = NSLock()
    private let sequences: Int
    private let counters: () -> ExpertCacheCounters
    private var started: Set<Int> = []
    private var opened: (time: UInt64, counters: ExpertCacheCounters)?
    private var tokens = 0
    private var lastToken: UInt64 = 0

    init(sequences: Int, counters: @escaping () -> ExpertCacheCounters) {
        self.sequences = sequences
        self.counters = counters
    }

    func token(sequence: Int) {
        let now = DispatchTime.now().uptimeNanoseconds
        lock.lock()
        defer { lock.unlock() }
        if !started.contains(sequence) {
            started.insert(sequence)
            if started.count == sequences { opened = (now, counters()) }
        } else if opened != nil {
            tokens += 1
            lastToken = now
        }
    }

    func result() throws -> BenchBatchCommand.Measurement {
        lock.lock()
        defer { lock.unlock() }
        guard let opened, tokens > 0 else { throw CommandError("no token was decoded after the prefill: raise --gen-tokens") }
        let end = counters()
        return .init(decodedTokens: tokens, seconds: Double(lastToken - opened.time) / 1e9,
                     bytesRead: end.demandBytes + end.prefetchBytes - opened.counters.demandBytes - opened.counters.prefetchBytes,
                     hits: end.hits - opened.counters.hits, misses: end.misses - opened.counters.misses,
                     stallSeconds: end.stallSeconds - opened.counters.stallSeconds,
                     prefetchesIssued: end.prefetchesIssued - opened.counters.prefetchesIssued,
                     prefetchHits: end.prefetchHits - opened.counters.prefetchHits,
                     prefetchesLate: end.prefetchesLate - opened.counters.prefetchesLate, expertCacheBytes: 0)
    }
}

/// The first failure message of a concurrent run.
final class FailureBox: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var message: String?
    func set(_ text: String) { lock.lock(); if message == nil { message = text }; lock.unlock() }
}
