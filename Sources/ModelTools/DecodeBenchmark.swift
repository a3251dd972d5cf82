import ExpertCache
import ExpertPrediction
import Foundation
import InferenceEngine
import ModelFormats
import MoEModels
import Runtime
import TensorMath

/// llama-bench-style prefill (pp) and decode (tg) of one sequence under a memory budget
/// (`moe-serve bench decode`), each run from a cold expert cache in a fresh model, with the
/// physical bound of this machine measured in the same process: the compute time per token
/// (time not stalled on I/O) and the disk's random-read bandwidth at the reader queue depth, or
/// what the disk delivered while the runs' reads ran when that was more.
public struct DecodeBenchmark: Sendable {
    /// How the model runs (model directory, memory budget, cache policy, prefetch, predictor).
    public var specification: RuntimeSpecification
    /// Prompt length (pp).
    public var promptTokens = 512
    /// Tokens generated (tg); `genTokens - 1` decode steps are timed.
    public var genTokens = 128
    /// Runs per configuration; medians are reported.
    public var runs = 5
    /// Also measure load-on-demand (no prefetch, LRU) in the same run.
    public var baseline = false
    /// Budgets (bytes) to sweep for a plot of decode tokens/s against the budget.
    public var plotBudgets: [Int]?
    /// Seed of the random prompt.
    public var seed: UInt64 = 1
    /// Lossy: skip a missing routed expert whose router weight is below this (docs/LOSSY.md).
    public var skipMissingBelow: Float?
    /// Lossy: run missing experts from the store's low-bit copies (docs/LOSSY.md).
    public var lowBitMisses = false
    /// Also measure a perfect predictor reading this many MoE layers ahead (`OraclePrefetcher`
    /// replaying the routing a recording run of the same seeded generation made), in the same
    /// run: the yardstick for how far the real predictor is from what prefetching could give.
    public var perfectPredictorDepth: Int?
    /// With `perfectPredictorDepth`: also measure the perfect predictor's reads added to the
    /// real predictor's, so that the rows part what the real one misses from what it reads wrong.
    public var perfectBesideReal = false

    /// A benchmark of the model `specification` describes, with the default lengths.
    public init(specification: RuntimeSpecification) { self.specification = specification }

    /// One run's measurements.
    public struct Run: Encodable, Sendable {
        public var prefillSeconds: Double
        public var decodeSeconds: Double
        public var prefillStallSeconds: Double
        public var decodeStallSeconds: Double
        public var prefillBytesRead: Int
        public var decodeBytesRead: Int
        public var decodeBytesNeeded: Int
        public var decodeHits: Int
        public var decodeMisses: Int
        public var recall: Double?
        public var peakResidentBytes: Int?
        /// Decode seconds during which at least one expert read ran (the rest the disk idled).
        public var decodeIOBusySeconds: Double? = nil
        /// Decode reads' running seconds summed over reads (÷ busy: mean reads in flight).
        public var decodeReadSeconds: Double? = nil
        /// Seconds decode's demand reads waited queued for a reader, summed over reads.
        public var decodeDemandQueuedSeconds: Double? = nil
        /// Decode's experts begun on gate and up before their down matrix had arrived (split reads).
        public var decodeSplitStarts: Int? = nil
        /// Bytes decode read ahead of use (prefetches), used or not.
        public var decodePrefetchBytes: Int? = nil
        /// The policy choosing victims at the run's end, where the policy switches between
        /// others (the default `sequence` policy's `fixed_recency` or `measured_recency`).
        public var policyLeader: String? = nil
        /// What `--prefetch auto` had decided at the run's end (nil: prefetch on or off).
        public var prefetchAuto: PrefetchSwitch.Summary? = nil
        /// The tokens generated (not in the JSON): a replay must generate the recording's.
        public var tokens: [Int] = []
        enum CodingKeys: String, CodingKey {
            case policyLeader = "policy_leader", prefetchAuto = "prefetch_auto"
            case decodeIOBusySeconds = "decode_io_busy_seconds", decodeReadSeconds = "decode_read_seconds"
            case decodeDemandQueuedSeconds = "decode_demand_queued_seconds", decodeSplitStarts = "decode_split_starts"
            case decodePrefetchBytes = "decode_prefetch_bytes"
            case prefillSeconds = "prefill_seconds", decodeSeconds = "decode_seconds"
            case prefillStallSeconds = "prefill_stall_seconds", decodeStallSeconds = "decode_stall_seconds"
            case prefillBytesRead = "prefill_bytes_read", decodeBytesRead = "decode_bytes_read", decodeBytesNeeded = "decode_bytes_needed"
            case decodeHits = "decode_hits", decodeMisses = "decode_misses", recall, peakResidentBytes = "peak_resident_bytes"
        }
    }

    /// A configuration's medians, spreads and bound.
    public struct Summary: Encodable, Sendable {
        public var name: String
        public var budgetBytes: Int?
        public var prefetch: String
        public var policy: String
        public var predictor: String?
        public var prefillTokensPerSecond: Double
        public var prefillSpread: [Double]
        public var decodeTokensPerSecond: Double
        public var decodeSpread: [Double]
        public var hitRate: Double
        public var recall: Double?
        public var bytesReadPerToken: Double
        public var prefillBytesRead: Double
        public var stallFraction: Double
        public var prefillStallFraction: Double
        public var computeSecondsPerToken: Double
        public var ioSecondsPerToken: Double
        public var boundDecodeTokensPerSecond: Double
        public var boundPrefillTokensPerSecond: Double
        public var peakResidentBytes: Int?
        public var runs: [Run]
        /// KV-cache bytes per position: what the memory plan counts, what a cache of this run's
        /// length really allocates (buffers ÷ rows), and what full attention heads would hold
        /// (keys and values of every head; for multi-head latent attention, instead of its latent
        /// and rotary key).
        public var kvBytesPerTokenPlan: Int?
        public var kvBytesPerTokenAllocated: Int?
        public var kvBytesPerTokenFullHeads: Int?
        /// Where decode time goes against the disk (medians over runs): the share of decode time
        /// with a read running, the bytes read ÷ that busy time, and the mean reads in flight.
        public var ioBusyFraction: Double? = nil
        public var busyGBps: Double? = nil
        /// The disk rate the bound divides by: the larger of the probe's and `busyGBps`.
        public var boundDiskGBps: Double? = nil
        public var meanReadsInFlight: Double? = nil
        /// Bytes read ÷ the whole decode time (median over runs): the rate the disk gave this
        /// decode end to end. Against a sustained probe of the disk it says whether the runs were
        /// limited by the disk itself (docs/BENCHMARKS.md, session 19).
        public var deliveredGBps: Double? = nil
        enum CodingKeys: String, CodingKey {
            case ioBusyFraction = "io_busy_fraction", busyGBps = "busy_gb_per_second", meanReadsInFlight = "mean_reads_in_flight"
            case deliveredGBps = "delivered_gb_per_second"
            case boundDiskGBps = "bound_disk_gb_per_second"
            case name, prefetch, policy, predictor, recall, runs
            case budgetBytes = "budget_bytes"
            case prefillTokensPerSecond = "prefill_tokens_per_second", prefillSpread = "prefill_min_max"
            case decodeTokensPerSecond = "decode_tokens_per_second", decodeSpread = "decode_min_max"
            case hitRate = "hit_rate", bytesReadPerToken = "bytes_read_per_token", prefillBytesRead = "prefill_bytes_read"
            case stallFraction = "stall_fraction", prefillStallFraction = "prefill_stall_fraction"
            case computeSecondsPerToken = "compute_seconds_per_token", ioSecondsPerToken = "io_seconds_per_token"
            case boundDecodeTokensPerSecond = "bound_decode_tokens_per_second", boundPrefillTokensPerSecond = "bound_prefill_tokens_per_second"
            case peakResidentBytes = "peak_resident_bytes"
            case kvBytesPerTokenPlan = "kv_bytes_per_token_plan", kvBytesPerTokenAllocated = "kv_bytes_per_token_allocated"
            case kvBytesPerTokenFullHeads = "kv_bytes_per_token_full_heads"
        }
    }

    /// Runs every configuration; returns the JSON output, a table for people and, with
    /// `plotBudgets`, the SVG plot. Progress goes to stderr.
    public func run() throws -> (output: Output, table: String, plot: String?) {
            guard promptTokens >= 1, genTokens >= 2, runs >= 1 else { throw ToolError("--prompt-tokens ≥ 1, --gen-tokens ≥ 2, --runs ≥ 1") }
            let url = specification.model
            let disk: Double?
            if let emulated = try PacedExpertLoader.environmentRate(), ExpertStore.isStore(at: url) {
                // An emulated disk (`MOE_DISK_MBPS`) has its rate by definition; a probe would read the real one.
                disk = emulated / 1e9
                printError(String(format: "bench decode: an emulated disk of %.2f GB/s (MOE_DISK_MBPS)", emulated / 1e9))
            } else {
                disk = try measureDisk(url)
                if let disk { printError(String(format: "bench decode: disk random reads %.2f GB/s at queue depth %d (O_DIRECT, %@)", disk, probeDepth,
                                                specification.ioEngine.rawValue)) }
            }
            var onDemand = specification
            onDemand.prefetch = .off
            onDemand.policy = .lru
            var main = try measure(name: "moe-serve", spec: specification, disk: disk)
            var results = [main]
            if baseline {
                results.append(try measure(name: "load-on-demand", spec: onDemand, disk: disk))
            }
            if let depth = perfectPredictorDepth {
                results += try measurePerfectPredictor(depth: depth, disk: disk)
            }
            var sweep: [(budget: Int, rows: [Summary])] = []
            var plot: String?
            if let plotBudgets {
                for budget in plotBudgets {
                    var spec = specification
                    spec.memoryBudgetBytes = budget
                    var rows = [try measure(name: "moe-serve", spec: spec, disk: disk)]
                    if baseline {
                        spec.prefetch = .off
                        spec.policy = .lru
                        rows.append(try measure(name: "load-on-demand", spec: spec, disk: disk))
                    }
                    sweep.append((budget, rows))
                }
                plot = BudgetPlot.svg(sweep.map { ($0.budget, $0.rows.map { ($0.name, $0.decodeTokensPerSecond, $0.boundDecodeTokensPerSecond) }) })
            }
            main = results[0]

            var table = "| config | pp\(promptTokens) tok/s | tg\(genTokens) tok/s | × load-on-demand | hit rate | recall | MB read/token | stall | bound tg tok/s | % of bound |\n|---|---|---|---|---|---|---|---|---|---|\n"
            for r in results + sweep.flatMap(\.rows) {
                let base = baseline ? results[1].decodeTokensPerSecond : r.decodeTokensPerSecond
                table += String(format: "| %@ @ %@ | %.2f | %.2f | %.2f | %.3f | %@ | %.1f | %.0f%% | %.2f | %.0f%% |\n",
                                r.name, r.budgetBytes.map { formatBytes($0) } ?? "all", r.prefillTokensPerSecond, r.decodeTokensPerSecond,
                                r.decodeTokensPerSecond / max(base, 1e-9), r.hitRate, r.recall.map { String(format: "%.3f", $0) } ?? "–",
                                r.bytesReadPerToken / 1e6, r.stallFraction * 100, r.boundDecodeTokensPerSecond,
                                r.decodeTokensPerSecond / max(r.boundDecodeTokensPerSecond, 1e-9) * 100)
            }
            return (Output(model: url.path, promptTokens: promptTokens, genTokens: genTokens, runs: runs, diskGBps: disk,
                           main: main, baselines: Array(results.dropFirst()), sweep: sweep.flatMap(\.rows)), table, plot)
    }

    /// The JSON `bench decode` prints: the main configuration's fields at the top level.
    public struct Output: Encodable, Sendable {
        public var model: String
        public var promptTokens: Int
        public var genTokens: Int
        public var runs: Int
        public var diskGBps: Double?
        public var main: Summary
        public var baselines: [Summary]
        public var sweep: [Summary]
        enum CodingKeys: String, CodingKey { case model, promptTokens = "prompt_tokens", genTokens = "gen_tokens", runs = "run_count", diskGBps = "disk_gbps", baselines, sweep }

        // The main configuration's fields sit at the top level, as `bench decode`'s contract says.
        // The number of runs is `run_count`: `runs` is the main configuration's per-run array, which
        // a count under the same key used to overwrite.
        public func encode(to encoder: Encoder) throws {
            try main.encode(to: encoder)
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(model, forKey: .model)
            try container.encode(promptTokens, forKey: .promptTokens)
            try container.encode(genTokens, forKey: .genTokens)
            try container.encode(runs, forKey: .runs)
            try container.encodeIfPresent(diskGBps, forKey: .diskGBps)
            try container.encode(baselines, forKey: .baselines)
            try container.encode(sweep, forKey: .sweep)
        }
    }

    /// Random whole-expert O_DIRECT reads at the reader queue depth, in GB/s (nil for a
    /// checkpoint directory, whose experts are read through the page cache).
    /// The probe's queue depth: the reader threads (the default ones under auto).
    private var probeDepth: Int { specification.readerThreads == 0 ? RuntimeSpecification.defaultReaderThreads : specification.readerThreads }

    private func measureDisk(_ url: URL) throws -> Double? {
        guard ExpertStore.isStore(at: url) else { return nil }
        let store = try ExpertStore(url: url, ioEngine: specification.ioEngine)
        let blobs = store.manifest.experts.blobs
        guard !blobs.isEmpty else { return nil }
        let path = url.appendingPathComponent(store.manifest.experts.file).path
        // Nothing of experts.bin may come from the page cache (packing leaves much of it there).
        IOBenchmark.dropCache(path)
        // The engine the cache reads with (io_uring or threads), so the bound is that engine's.
        let reader = store.expertReader
        var rng = SplitMix64(seed: seed &+ 17)
        // About 2 GB, at least 64 reads.
        let count = max(64, min(8192, (2 << 30) / max(blobs[0].storedLength, 1)))
        let order = (0..<count).map { _ in blobs[Int(rng.next() % UInt64(blobs.count))] }
        let m = try IOBenchmark.random(order: order, depth: probeDepth, mode: "probe") { entry, buffer in
            _ = try reader.read(into: buffer, offset: entry.offset, length: ExpertStore.roundUp(entry.storedLength))
        }
        return m.gbps
    }

    /// What a run does besides generating: record its routing for the perfect predictor, or
    /// replay a recording through one.
    private enum Replay {
        case none
        case record(URL)
        case replay(decodeRouting: [[[Int]?]], tokens: [Int], depth: Int)
    }

    /// The perfect predictor's rows: one unmeasured run with prefetch off records the routing of
    /// the seeded generation, then `runs` runs replay it `depth` MoE layers ahead with prefetch
    /// off (the oracle's reads the only guesses) and, with `perfectBesideReal`, `runs` more with
    /// the real predictor guessing beside it (what its wrong guesses cost when none is missing).
    /// Throws if a replay generates other tokens.
    private func measurePerfectPredictor(depth: Int, disk: Double?) throws -> [Summary] {
        guard depth >= 1 else { throw ToolError("--perfect-predictor: expected a depth of 1 or more MoE layers, got \(depth)") }
        var spec = specification
        spec.prefetch = .off
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("moe-bench-decode-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).jsonl")
        defer { try? FileManager.default.removeItem(at: url) }
        printError("bench decode: recording the routing the perfect predictor replays")
        let recording = try measure(name: "recording", spec: spec, disk: disk, runCount: 1, replay: .record(url))
        let trace = try RoutingTrace(jsonLines: Data(contentsOf: url), source: url.path)
        let replay = Replay.replay(decodeRouting: trace.tokens.filter { $0.phase == "decode" }.map(\.layers),
                                   tokens: recording.runs[0].tokens, depth: depth)
        var rows = [try measure(name: "perfect-\(depth)", spec: spec, disk: disk, replay: replay)]
        if perfectBesideReal {
            rows.append(try measure(name: "real+perfect-\(depth)", spec: specification, disk: disk, replay: replay))
        }
        return rows
    }

    private func measure(name: String, spec: RuntimeSpecification, disk: Double?, runCount: Int? = nil, replay: Replay = .none) throws -> Summary {
        var measured: [Run] = []
        var policyName = "none"
        var predictorName: String?
        var budget: Int?
        var kv: (plan: Int, allocated: Int, fullHeads: Int)?
        var spec = spec
        spec.contextTokens = promptTokens + genTokens + 1
        for index in 0..<(runCount ?? runs) {
            let runtime = try ModelRuntime.open(spec)
            defer { runtime.close() }
            // As a server does once it is up (`serve`): reads then find their buffers faulted in.
            if let warming = runtime.warmExpertBuffers(), warming.buffers > 0, index == 0 { printError("bench decode: \(warming.summary)") }
            runtime.cache?.skipMissingBelow = skipMissingBelow
            if lowBitMisses { try runtime.cache?.enableLowBitMisses() }
            let model = runtime.model
            budget = runtime.plan?.budgetBytes
            if kv == nil {
                // A cache of the run's length, as `Generator` makes it: its buffers per row.
                let cache = model.makeCache()
                cache.reserve(promptTokens + genTokens)
                let config = model.config, element = model.kvPrecision.byteCount
                let fullHeads = config.latentAttention.map { config.layerCount * config.headCount * ($0.queryHeadDim + $0.valueDim) * element }
                kv = (model.kvBytesPerToken, cache.byteCount / max(cache.capacity, 1), fullHeads ?? model.kvBytesPerToken)
                printError("bench decode: KV cache \(kv!.plan) bytes/token planned, \(kv!.allocated) allocated (\(cache.capacity) rows: \(cache.byteCount) bytes), full heads \(kv!.fullHeads)")
            }
            predictorName = runtime.predictorName
            policyName = runtime.cache?.statistics().policy ?? "none"
            var recorder: TraceRecorder?
            switch replay {
            case .none: break
            case .record(let url):
                recorder = try TraceRecorder(url: url, layerCount: model.config.layerCount)
                runtime.chain(recorder)
            case .replay(let routing, _, let depth):
                guard let cache = runtime.cache else { throw ToolError("--perfect-predictor: every expert is resident, there is nothing to prefetch") }
                runtime.chain(OraclePrefetcher(decodeRouting: routing, moeLayers: model.config.moeLayers, depth: depth, provider: cache))
                predictorName = predictorName.map { "\($0)+perfect" } ?? "perfect"
            }
            var rng = SplitMix64(seed: seed)
            let prompt = (0..<promptTokens).map { _ in Int(rng.next() % UInt64(model.config.vocabSize)) }
            let start = runtime.cache?.statistics().total ?? ExpertCacheCounters()
            var afterPrefill = start
            var busyAfterPrefill = 0.0
            // Sampled at temperature 1, seeded: greedy decoding of a random-weight model repeats
            // one token, routes every step to the same experts and would measure only hits.
            // `genTokens` samples take `genTokens - 1` decode steps (the first token comes from
            // the prefill's logits), the steps this benchmark times.
            var sampling = SamplingParameters()
            sampling.temperature = 1
            sampling.seed = seed
            let result = try Generator(model: model, sampling: sampling).generate(
                prompt: prompt, maxTokens: genTokens, stopTokens: [],
                onPrefilled: {
                    let stats = runtime.cache?.statistics()
                    afterPrefill = stats?.total ?? ExpertCacheCounters()
                    busyAfterPrefill = stats?.ioBusySeconds ?? 0
                })
            guard result.tokens.count == genTokens else {
                throw ToolError("--prompt-tokens \(promptTokens) + --gen-tokens \(genTokens) exceed the model's context of \(model.config.maxPositionEmbeddings) tokens")
            }
            try recorder?.finish()
            if case .replay(_, let recorded, _) = replay, result.tokens != recorded {
                let at = zip(result.tokens, recorded).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(result.tokens.count, recorded.count)
                throw ToolError("--perfect-predictor: the replay generated other tokens than the recording from token \(at) on, so its routing no longer matches")
            }
            let t0 = 0.0, t1 = result.stats.prefillSeconds, t2 = t1 + result.stats.decodeSeconds
            let endStats = runtime.cache?.statistics()
            let end = endStats?.total ?? ExpertCacheCounters()
            let decodeRead = end.bytesRead - afterPrefill.bytesRead
            let decodeWasted = end.wastedPrefetchBytes - afterPrefill.wastedPrefetchBytes
            var run = Run(
                prefillSeconds: t1 - t0, decodeSeconds: t2 - t1,
                prefillStallSeconds: afterPrefill.stallSeconds - start.stallSeconds,
                decodeStallSeconds: end.stallSeconds - afterPrefill.stallSeconds,
                prefillBytesRead: afterPrefill.bytesRead - start.bytesRead,
                decodeBytesRead: decodeRead, decodeBytesNeeded: max(0, decodeRead - decodeWasted),
                decodeHits: end.hits - afterPrefill.hits, decodeMisses: end.misses - afterPrefill.misses,
                recall: runtime.predictor.map { $0.statistics.total.recall },
                peakResidentBytes: ProcessMemory.peakResidentBytes())
            if let endStats {
                // Read before the step ends, a read still running past the last token counts up to here.
                run.decodeIOBusySeconds = min(run.decodeSeconds, (endStats.ioBusySeconds ?? 0) - busyAfterPrefill)
                run.decodeReadSeconds = end.readSeconds - afterPrefill.readSeconds
                run.decodeDemandQueuedSeconds = end.demandQueuedSeconds - afterPrefill.demandQueuedSeconds
                run.decodeSplitStarts = end.splitStarts - afterPrefill.splitStarts
                run.decodePrefetchBytes = end.prefetchBytes - afterPrefill.prefetchBytes
                run.policyLeader = endStats.policyLeader
            }
            run.prefetchAuto = runtime.prefetchSwitch?.summary
            run.tokens = result.tokens
            if let auto = run.prefetchAuto {
                printError(String(format: "bench decode: prefetch auto after run %d: leads %@, %d rounds (last median on ÷ off %.3f), %d decode steps on, %d off",
                                  index + 1, auto.leader.rawValue, auto.rounds, auto.lastMedianRatio ?? .nan, auto.stepsOn, auto.stepsOff))
            }
            measured.append(run)
            printError(String(format: "bench decode: %@ run %d/%d: pp %.2f tok/s, tg %.2f tok/s, %.1f MB read/token, stall %.0f%%, disk busy %.0f%% at %.2f GB/s, %.2f reads in flight, demand reads queued %.2f ms each, %d experts begun before their down matrix",
                              name, index + 1, runCount ?? runs, Double(promptTokens) / run.prefillSeconds,
                              Double(genTokens - 1) / run.decodeSeconds, Double(run.decodeBytesRead) / Double(genTokens - 1) / 1e6,
                              run.decodeStallSeconds / run.decodeSeconds * 100,
                              (run.decodeIOBusySeconds ?? 0) / run.decodeSeconds * 100,
                              Double(run.decodeBytesRead) / max(run.decodeIOBusySeconds ?? 0, 1e-9) / 1e9,
                              (run.decodeReadSeconds ?? 0) / max(run.decodeIOBusySeconds ?? 0, 1e-9),
                              (run.decodeDemandQueuedSeconds ?? 0) * 1e3 / Double(max(1, run.decodeMisses)),
                              run.decodeSplitStarts ?? 0))
        }
        let steps = Double(genTokens - 1)
        func median(_ values: [Double]) -> Double {
            let sorted = values.sorted()
            return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        }
        let prefillRates = measured.map { Double(promptTokens) / $0.prefillSeconds }
        let decodeRates = measured.map { steps / $0.decodeSeconds }
        let hits = measured.reduce(0) { $0 + $1.decodeHits }, misses = measured.reduce(0) { $0 + $1.decodeMisses }
        let recalls = measured.compactMap(\.recall)
        let busy = measured.compactMap { run in run.decodeIOBusySeconds.map { (run: run, busy: $0) } }
        let busyGBps = busy.isEmpty ? nil : median(busy.map { Double($0.run.decodeBytesRead) / max($0.busy, 1e-9) / 1e9 })
        // The disk's rate for the bound: the probe's, or what the disk delivered while these runs'
        // reads ran when that was more. This cloud disk's rate swings between the probe and the
        // runs (0.93 GB/s probed, 1.25-1.40 delivered minutes later, 2026-12-05), and a bound
        // below what was achieved says nothing about how close the reads come to the disk.
        let boundDisk = disk.map { max($0, busyGBps ?? 0) }
        // The bound: compute is what a run spends not waiting on I/O; I/O is the bytes it
        // had to read (wasted prefetches excluded) at that disk rate.
        let compute = median(measured.map { ($0.decodeSeconds - $0.decodeStallSeconds) / steps })
        let io = boundDisk.map { median(measured.map { Double($0.decodeBytesNeeded) / steps }) / ($0 * 1e9) } ?? 0
        let prefillCompute = median(measured.map { $0.prefillSeconds - $0.prefillStallSeconds })
        let prefillIO = boundDisk.map { median(measured.map { Double($0.prefillBytesRead) }) / ($0 * 1e9) } ?? 0
        return Summary(
            name: name, budgetBytes: budget, prefetch: spec.prefetch.rawValue, policy: policyName, predictor: predictorName,
            prefillTokensPerSecond: median(prefillRates), prefillSpread: [prefillRates.min()!, prefillRates.max()!],
            decodeTokensPerSecond: median(decodeRates), decodeSpread: [decodeRates.min()!, decodeRates.max()!],
            hitRate: hits + misses > 0 ? Double(hits) / Double(hits + misses) : 1,
            recall: recalls.isEmpty ? nil : median(recalls),
            bytesReadPerToken: median(measured.map { Double($0.decodeBytesRead) / steps }),
            prefillBytesRead: median(measured.map { Double($0.prefillBytesRead) }),
            stallFraction: median(measured.map { $0.decodeStallSeconds / $0.decodeSeconds }),
            prefillStallFraction: median(measured.map { $0.prefillStallSeconds / $0.prefillSeconds }),
            computeSecondsPerToken: compute, ioSecondsPerToken: io,
            boundDecodeTokensPerSecond: 1 / max(compute, io, 1e-9),
            boundPrefillTokensPerSecond: Double(promptTokens) / max(prefillCompute, prefillIO, 1e-9),
            peakResidentBytes: measured.compactMap(\.peakResidentBytes).max(), runs: measured,
            kvBytesPerTokenPlan: kv?.plan, kvBytesPerTokenAllocated: kv?.allocated, kvBytesPerTokenFullHeads: kv?.fullHeads,
            ioBusyFraction: busy.isEmpty ? nil : median(busy.map { $0.busy / $0.run.decodeSeconds }),
            busyGBps: busyGBps, boundDiskGBps: boundDisk,
            meanReadsInFlight: busy.isEmpty ? nil : median(busy.map { ($0.run.decodeReadSeconds ?? 0) / max($0.busy, 1e-9) }),
            deliveredGBps: median(measured.map { Double($0.decodeBytesRead) / max($0.decodeSeconds, 1e-9) / 1e9 }))
    }
}

/// A small self-contained SVG line chart: decode tokens/s against the memory budget.
enum BudgetPlot {
    /// The chart of `points`: each budget's configurations, their decode rate and bound.
    static func svg(_ points: [(budget: Int, series: [(name: String, tokensPerSecond: Double, bound: Double)])]) -> String {
        let width = 640.0, height = 400.0, left = 60.0, right = 20.0, top = 30.0, bottom = 50.0
        let budgets = points.map { Double($0.budget) / Double(1 << 30) }
        let maxX = max(budgets.max() ?? 1, 1e-9), maxY = max(points.flatMap { $0.series.flatMap { [$0.tokensPerSecond, $0.bound] } }.max() ?? 1, 1e-9) * 1.1
        func x(_ v: Double) -> Double { left + v / maxX * (width - left - right) }
        func y(_ v: Double) -> Double { height - bottom - v / maxY * (height - top - bottom) }
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        svg += "<text x=\"\(left)\" y=\"18\">decode tokens/s against memory budget (GiB)</text>\n"
        svg += "<line x1=\"\(left)\" y1=\"\(y(0))\" x2=\"\(width - right)\" y2=\"\(y(0))\" stroke=\"black\"/>\n"
        svg += "<line x1=\"\(left)\" y1=\"\(y(0))\" x2=\"\(left)\" y2=\"\(top)\" stroke=\"black\"/>\n"
        for (i, b) in budgets.enumerated() where i < points.count {
            svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.1f</text>\n", x(b), y(0) + 18, b)
        }
        for k in 0...4 {
            let v = maxY * Double(k) / 4
            svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", left - 6, y(v) + 4, v)
        }
        let names = points.first?.series.map(\.name) ?? []
        let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
        for (s, name) in names.enumerated() {
            let colour = colours[s % colours.count]
            let line = points.enumerated().compactMap { i, p in s < p.series.count ? String(format: "%.1f,%.1f", x(budgets[i]), y(p.series[s].tokensPerSecond)) : nil }
            svg += "<polyline fill=\"none\" stroke=\"\(colour)\" stroke-width=\"2\" points=\"\(line.joined(separator: " "))\"/>\n"
            svg += "<text x=\"\(width - right - 150)\" y=\"\(top + 16 * Double(s + 1))\" fill=\"\(colour)\">\(name)</text>\n"
        }
        if !names.isEmpty {
            let bound = points.map { String(format: "%.1f,%.1f", x(Double($0.budget) / Double(1 << 30)), y($0.series[0].bound)) }
            svg += "<polyline fill=\"none\" stroke=\"gray\" stroke-dasharray=\"4 3\" points=\"\(bound.joined(separator: " "))\"/>\n"
            svg += "<text x=\"\(width - right - 150)\" y=\"\(top + 16 * Double(names.count + 1))\" fill=\"gray\">bound (\(names[0]))</text>\n"
        }
        return svg + "</svg>\n"
    }
}
