import ExpertCache
import Foundation
import InferenceEngine
import ModelFormats
@testable import ModelTools
import Runtime
import Testing

/// The benchmark tools run as a library, without the executable: a routing trace replayed through
/// every policy, the I/O benchmark on the demo store, and the batch benchmark through the engine.
@Suite(.serialized) struct ModelToolsTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let demo = root.appendingPathComponent("DemoModel")

    /// A seeded trace: `layers` layers of `experts` experts, top-`k`, with a skewed (Zipf-like)
    /// choice so that policies differ.
    static func trace(tokens: Int, layers: Int, experts: Int, k: Int, seed: UInt64) -> RoutingTrace {
        var state = seed
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        return RoutingTrace(tokens: (0..<tokens).map { position in
            TraceToken(seq: 0, pos: position, phase: "decode", layers: (0..<layers).map { _ in
                var chosen: [Int] = []
                while chosen.count < k {
                    // Squaring a uniform number favours small expert indices.
                    let u = Double(next() % 1_000_000) / 1_000_000
                    let expert = Int(u * u * Double(experts))
                    if !chosen.contains(expert) { chosen.append(expert) }
                }
                return chosen
            })
        })
    }

    /// `MOE_SEQUENCE_PARAMETERS` (a sweep knob of `bench trace`): four numbers or a clear error.
    @Test func sequencePolicyParametersParseOrFailClearly() throws {
        #expect(try TraceBenchmark.sequenceParameters(nil) == SequenceAwarePolicy.Parameters())
        let swept = try TraceBenchmark.sequenceParameters("64, 0.05,32,1024")
        #expect(swept.priorWeight == 64 && swept.recencyWeight == 0.05 && swept.recencyHalfLife == 32 && swept.longHalfLife == 1024)
        #expect(throws: (any Error).self) { try TraceBenchmark.sequenceParameters("64,0.05,32") }
        #expect(throws: (any Error).self) { try TraceBenchmark.sequenceParameters("0,0.05,32,1024") }
        #expect(try TraceBenchmark.duelSampleStride(nil) == 2)
        #expect(try TraceBenchmark.duelSampleStride("1") == 1)
        #expect(throws: (any Error).self) { try TraceBenchmark.duelSampleStride("0") }
    }

    @Test func beladyBoundsEveryPolicyOnAReplayedTrace() throws {
        let routing = Self.trace(tokens: 400, layers: 4, experts: 16, k: 2, seed: 7)
        let (output, table) = try TraceBenchmark(trace: routing, cacheSize: .perLayer(4)).run()
        #expect(output.tokens == 400)
        #expect(output.layers == 4)
        #expect(output.topK == 2)
        #expect(output.cachePerLayer == 4)
        #expect(output.order == ["lru", "lfu", "lrfu", "hotset", "learned", "sequence", "sequence_measured", "belady",
                                 "lru_global", "lfu_global", "lrfu_global", "learned_global", "sequence_global", "sequence_measured_global",
                                 "sequence_dueling_global", "fate", "belady_global"])
        // The gap each policy closes is measured against LRU and Belady of its own pool.
        #expect(output.gapClosed["lru"] == 0 && output.gapClosed["belady"] == 1)
        #expect(output.gapClosed["lru_global"] == 0 && output.gapClosed["belady_global"] == 1)
        let belady = try #require(output.policies["belady"]).hitRate
        let beladyGlobal = try #require(output.policies["belady_global"]).hitRate
        for (name, result) in output.policies {
            #expect(result.requests == 400 * 4 * 2, "\(name)")
            #expect(result.hitRate == Double(result.hits) / Double(result.requests), "\(name)")
            let optimum = result.pool == .global ? beladyGlobal : belady
            #expect(result.hitRate <= optimum + 1e-12, "\(name) \(result.hitRate) beats Belady's \(optimum)")
        }
        // A quarter of the experts cached: hits, but not always.
        #expect(belady > 0.3 && belady < 1)
        for name in output.order { #expect(table.contains(name)) }
    }

    /// `bench trace --sequences`: every shared-pool policy and Belady per batch size, the reads
    /// per token against one sequence's, and one sequence replayed even when not asked for.
    @Test func batchedReplayReportsReadsPerTokenAgainstOneSequence() throws {
        let routing = RoutingTrace(tokens: (0..<6).flatMap { s in
            Self.trace(tokens: 40, layers: 4, experts: 16, k: 2, seed: UInt64(11 + s)).tokens.map { token in
                var token = token
                token.seq = s
                return token
            }
        })
        let (output, table) = try TraceBenchmark(trace: routing, cacheSize: .perLayer(6)).runBatched(sequences: [4, 12])
        #expect(output.rows.map(\.sequences) == [4, 12])
        #expect(output.order.last == "belady_global" && output.floor == 2 && output.cachePerLayer == 6)
        let one = try TraceBenchmark(trace: routing, cacheSize: .perLayer(6)).runBatched(sequences: [1])
        #expect(one.output.rows.count == 1 && one.output.rows[0].readsRatioToOneSequence.values.allSatisfy { $0 == 1 })
        #expect(one.output.rows[0].steps == 6 * 40)
        for row in output.rows {
            #expect(row.steps == 40)
            #expect(row.unionPerLayer > 2 && row.unionPerLayer <= 16)
            let belady = try #require(row.policies["belady_global"])
            for (name, result) in row.policies {
                #expect(result.missesPerToken >= belady.missesPerToken - 1e-12, "\(name)")
                let ratio = try #require(row.readsRatioToOneSequence[name])
                let alone = try #require(one.output.rows[0].policies[name]).missesPerToken
                #expect(abs(ratio - alone / result.missesPerToken) < 1e-12)
            }
        }
        // Twelve sequences share more of each step's reads than four.
        #expect(output.rows[1].policies["lru_global"]!.missesPerToken < output.rows[0].policies["lru_global"]!.missesPerToken)
        for name in output.order { #expect(table.contains(name)) }
        #expect(throws: ToolError.self) { try TraceBenchmark(trace: routing, cacheSize: .perLayer(6)).runBatched(sequences: [0]) }
        #expect(throws: (any Error).self) { try TraceBenchmark(trace: routing, cacheSize: .perLayer(2)).runBatched(sequences: [12]) }
    }

    @Test func aCacheHoldingEveryExpertMissesOnlyOnFirstUse() throws {
        let routing = Self.trace(tokens: 100, layers: 2, experts: 8, k: 2, seed: 3)
        let distinct = (0..<2).map { layer in Set(routing.tokens.flatMap { $0.layers[layer] ?? [] }).count }.reduce(0, +)
        // 8 experts of 1 KiB per layer, given as bytes.
        let (output, _) = try TraceBenchmark(trace: routing, cacheSize: .bytes(total: 16 << 10, expert: 1 << 10)).run()
        #expect(output.cachePerLayer == 8)
        for (name, result) in output.policies {
            #expect(result.requests - result.hits == distinct, "\(name): \(result.requests - result.hits) misses")
        }
    }

    @Test func aCacheSmallerThanOneExpertPerLayerIsAClearError() {
        let routing = Self.trace(tokens: 10, layers: 4, experts: 8, k: 2, seed: 1)
        #expect(throws: ToolError.self) { try TraceBenchmark(trace: routing, cacheSize: .bytes(total: 3 << 10, expert: 1 << 10)).run() }
        #expect(throws: ToolError.self) { try TraceBenchmark(trace: RoutingTrace(tokens: []), cacheSize: .perLayer(2)).run() }
    }

    @Test func ioBenchmarkReadsTheDemoStore() throws {
        var benchmark = IOBenchmark(store: Self.demo)
        benchmark.reads = 16
        benchmark.queueDepths = [1, 2]
        benchmark.sequentialMiB = 1
        let (output, table) = try benchmark.run()
        let store = try ExpertStore(url: Self.demo)
        #expect(output.experts == store.manifest.experts.blobs.count)
        let modes = output.measurements.map(\.mode)
        // sequential, 2 depths x (threads, io_uring), read_expert_checked, 2 page-cache depths.
        #expect(modes.count == 8)
        #expect(modes.filter { $0.hasSuffix("_io_uring") }.count == 2)
        #expect(modes.first?.hasPrefix("sequential_") == true)
        #expect(modes.contains("read_expert_checked"))
        #expect(modes.filter { $0 == "random_page_cache" }.count == 2)
        for m in output.measurements where m.mode != modes[0] {
            #expect(m.reads == 16, "\(m.mode)")
            #expect(m.bytes > 16 * output.expertStoredBytes / 2, "\(m.mode)")
        }
        // Sequential reads go in whole 4 MiB blocks until the limit is passed.
        #expect(output.measurements[0].bytes >= min(1 << 20, store.manifest.experts.fileSize))
        #expect(output.measurements[0].bytes <= 4 << 20)
        #expect(table.contains("read_expert_checked"))
    }

    @Test func batchBenchmarkSizesTheKVCacheToTheBatchWithoutABudget() throws {
        // --expert-cache alone: 64 sequences of OLMoE's shape need ~280 MB of KV cache, which
        // nothing else bounds; a fixed default refused them.
        #expect(BatchBenchmark.kvCacheBytes(plan: nil, batchNeeds: 280 << 20) == 280 << 20)
        // Under --memory-budget the plan's share holds, and a batch that needs more is refused.
        let plan = try MemoryPlan.plan(budget: 512 << 20, denseBytes: 100 << 20, scratchBytes: 12 << 20, kvBytesPerToken: 1 << 20,
                                       kvTokens: 1024, minimumExpertBytes: 1 << 20)
        #expect(BatchBenchmark.kvCacheBytes(plan: plan, batchNeeds: 280 << 20) == plan.kvCacheBytes)
        #expect(plan.kvCacheBytes == 100 << 20)
    }

    @Test func batchBenchmarkDecodesThroughTheEngineUnderABudget() throws {
        var spec = RuntimeSpecification(model: Self.demo)
        spec.memoryBudgetBytes = ProcessMemory.runtimeReservation() + (64 << 20)
        var benchmark = BatchBenchmark(specification: spec)
        benchmark.sequences = [1, 2]
        benchmark.genTokens = 6
        benchmark.promptTokens = 4
        benchmark.runs = 1
        let traces = FileManager.default.temporaryDirectory.appendingPathComponent("batch-traces-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: traces, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: traces) }
        benchmark.traceDirectory = traces
        let (report, table) = try benchmark.run()
        #expect(report.results.map(\.sequences) == [1, 2])
        // Each run's routing was recorded step by step: every sequence's prompt as prefill rows,
        // then one decode row a step (the last token is never run), and it replays as recorded.
        let recorded = try RoutingTrace(contentsOf: traces.appendingPathComponent("batch-2seq-prefetch-\(spec.prefetch.rawValue)-run1.jsonl"))
        let bySequence = Dictionary(grouping: recorded.tokens, by: \.seq)
        #expect(bySequence.count == 2)
        for tokens in bySequence.values {
            #expect(tokens.map(\.pos) == Array(0..<(benchmark.promptTokens + benchmark.genTokens - 1)))
            #expect(tokens.map(\.phase) == Array(repeating: "prefill", count: benchmark.promptTokens) + Array(repeating: "decode", count: benchmark.genTokens - 1))
        }
        let steps = try TraceReplay.recordedSteps(recorded)
        #expect(steps.contains { step in step.count == 2 && step.allSatisfy { $0.phase == "decode" } })
        let (replayed, replayTable) = try TraceBenchmark(trace: recorded, cacheSize: .perLayer(8)).runRecorded()
        #expect(replayed.steps == steps.count && replayed.order.last == "belady_global")
        let belady = try #require(replayed.policies["belady_global"]).decodeWindow.hitRate
        for (name, result) in replayed.policies { #expect(result.decodeWindow.hitRate <= belady + 1e-12, "\(name)") }
        #expect(replayTable.contains("sequence_measured_global") && replayTable.contains("sequence_dueling_global"))
        if let lruGap = replayed.gapClosed["lru_global"] { #expect(lruGap == 0 && replayed.gapClosed["belady_global"] == 1) }
        for row in report.results {
            // The window opens once every sequence has its first token; at most the rest fall inside it.
            #expect(row.decodedTokens > 0 && row.decodedTokens <= row.sequences * (benchmark.genTokens - 1))
            if row.sequences == 1 { #expect(row.decodedTokens == benchmark.genTokens - 1) }
            #expect(row.decodeTokensPerSecond > 0)
            #expect((0...1).contains(row.hitRate))
            #expect(row.expertCacheBytes > 0)
            // Each run's bytes per token and wait per miss, in run order; the median run's bytes are among them.
            #expect(row.runBytesReadPerToken.count == benchmark.runs && row.runStallMillisecondsPerMiss.count == benchmark.runs)
            #expect(row.runBytesReadPerToken.contains(row.expertBytesReadPerToken))
            #expect(row.runStallMillisecondsPerMiss.allSatisfy { $0 >= 0 && $0.isFinite })
            // How busy the disk was, each run (an offloading cache here, so one figure a run).
            #expect(row.runIOBusyShare.count == benchmark.runs && row.runIOBusyShare.allSatisfy { $0 >= 0 && $0 <= 1 })
            // The steps that ran every sequence end with the first sequence; one sequence runs them all.
            let fullBatchSteps = try #require(row.fullBatchSteps)
            #expect(fullBatchSteps >= 1 && fullBatchSteps <= row.steps)
            #expect(row.runFullBatchTokensPerSecond.count == benchmark.runs)
            #expect(row.fullBatchTokensPerSecond.map { $0 > 0 } == true && row.fullBatchBytesReadPerToken.map { $0 >= 0 } == true)
            if row.sequences == 1 { #expect(fullBatchSteps == row.steps) }
        }
        #expect(table.contains("all running: tok/s (× one), steps"))
        #expect(report.prefetchComparison == nil)
        #expect(table.hasPrefix("| sequences |"))
    }

    /// A sequence whose prompt ended a step before the last one's decodes a step ahead and ends a
    /// step ahead; the steps after its end run fewer sequences than the row's. The window's
    /// full-batch part ends at the first end and counts only the steps that ran every sequence.
    @Test func theFullBatchPartOfTheWindowEndsWithTheFirstSequence() throws {
        final class Engine: @unchecked Sendable { var steps = 0; var counters = ExpertCacheCounters() }
        let engine = Engine()
        let window = DecodeWindow(sequences: 2, steps: { engine.steps }) { (engine.counters, nil) }
        /// One engine step: its reads, then its tokens (decodes before prompts, as the scheduler
        /// plans them), then it counts as finished.
        func step(reading bytes: Int, tokens sequences: [Int]) {
            usleep(1000)
            engine.counters.demandBytes += bytes
            for sequence in sequences { window.token(sequence: sequence) }
            engine.steps += 1
        }
        step(reading: 10, tokens: [0])      // sequence 0's prompt
        step(reading: 10, tokens: [0, 1])   // sequence 0 decodes; sequence 1's prompt ends (the window opens)
        step(reading: 50, tokens: [0, 1])
        step(reading: 50, tokens: [0, 1])
        window.finished()                   // sequence 0 reached its limit
        step(reading: 40, tokens: [1])
        window.finished()
        let measured = try window.result()
        #expect(measured.decodedTokens == 5 && measured.steps == 3 && measured.bytesRead == 140)
        let fullBatch = try #require(measured.fullBatch)
        #expect(fullBatch.decodedTokens == 4 && fullBatch.steps == 2 && fullBatch.bytesRead == 100)
        #expect(fullBatch.seconds > 0 && fullBatch.seconds < measured.seconds)

        // A sequence that ends before the last one starts decoding leaves no full-batch steps.
        let early = DecodeWindow(sequences: 2) { (ExpertCacheCounters(), nil) }
        early.token(sequence: 0)
        early.finished()
        early.token(sequence: 1)
        early.token(sequence: 1)
        #expect(try early.result().fullBatch == nil)
    }

    /// `bench batch --prefetch auto --compare-prefetch`: off, on and auto measured in each run,
    /// auto's row carrying what its duel decided, and auto compared with the faster of the two.
    @Test func batchBenchmarkComparesPrefetchAutoWithOnAndOff() throws {
        var spec = RuntimeSpecification(model: Self.demo)
        spec.memoryBudgetBytes = ProcessMemory.runtimeReservation() + (64 << 20)
        spec.expertCacheBytes = 6 << 20
        spec.prefetch = .auto
        var benchmark = BatchBenchmark(specification: spec)
        benchmark.sequences = [1]
        benchmark.genTokens = 24
        benchmark.promptTokens = 4
        benchmark.runs = 1
        benchmark.comparePrefetch = true
        let (report, table) = try benchmark.run()
        #expect(report.results.map(\.prefetch) == ["off", "on", "auto"])
        let auto = try #require(report.results.last?.prefetchAuto)
        // 23 decode steps, inside the first round, whose first block prefetches for at least 8.
        #expect(auto.leader == .on && auto.rounds == 0)
        #expect(auto.stepsOn >= 8 && auto.stepsOn + auto.stepsOff == 23)
        #expect(report.results.last?.runPrefetchAuto?.count == 1)
        #expect(report.results.dropLast().allSatisfy { $0.prefetchAuto == nil && $0.runPrefetchAuto == nil })
        let comparison = try #require(report.prefetchComparison?.first)
        #expect(comparison.autoOverBest.map { $0 > 0 } == true && comparison.pairedAutoOverBest?.count == 1)
        #expect(table.contains("auto ÷ the faster") && table.contains("prefetch auto, 1 sequences, run 1: leads on"))
    }

    /// `bench kernels --sampler` measures every setting at each vocabulary, and its table has a
    /// row per vocabulary.
    @Test func theSamplerBenchmarkTimesEverySettingAtEachVocabulary() {
        var benchmark = SamplerBenchmark()
        benchmark.vocabularies = [64, 3_000]
        benchmark.repetitions = 1
        benchmark.drawsPerRepetition = 2
        let (rows, table) = benchmark.run()
        #expect(rows.map(\.vocabulary) == [64, 3_000])
        for row in rows {
            for time in [row.llamaDefaultsMicroseconds, row.topPMicroseconds, row.minPMicroseconds,
                         row.untruncatedMicroseconds, row.greedyMicroseconds, row.wholeSortMicroseconds] {
                #expect(time > 0 && time.isFinite)
            }
        }
        #expect(table.split(separator: "\n").count == 2 + rows.count)
    }
}
