import ArgumentParser
import ExpertCache
import Foundation
import ModelTools

/// `moe-serve bench ...`: benchmarks; JSON on stdout, a human table on stderr. Each subcommand only
/// parses its arguments and prints; the benchmarks themselves are ModelTools' (tested there).
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks (JSON on stdout, a table on stderr).",
        subcommands: [BenchIOCommand.self, BenchKernelsCommand.self, TraceBenchCommand.self, BenchPredictorCommand.self, BenchBatchCommand.self,
                      BenchDecodeCommand.self])
}

/// `moe-serve bench io --model STORE`: `IOBenchmark`.
struct BenchIOCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "io",
        abstract: "Random expert reads with O_DIRECT at several queue depths vs sequential and page-cache bandwidth.")

    @OptionGroup var model: ModelOption
    @Option(help: "Random expert reads per measurement.") var reads: Int = 256
    @Option(name: .customLong("queue-depths"), help: "Comma-separated queue depths (threads, or reads in flight on io_uring).") var queueDepths: String = "1,4,16,32"
    @Option(help: "Rounds of random reads per engine and depth (the median round is reported).") var rounds: Int = 3
    @Option(name: .customLong("sequential-mib"), help: "MiB of experts.bin to read sequentially (capped at the file size).") var sequentialMiB: Int = 2048
    @Option(help: "Seed of the random expert order.") var seed: UInt64 = 1

    func validate() throws {
        guard reads > 0 else { throw ValidationError("--reads must be positive") }
        guard sequentialMiB > 0 else { throw ValidationError("--sequential-mib must be positive") }
    }

    func run() throws {
        try reportingErrors {
            var benchmark = IOBenchmark(store: try model.resolvedURL())
            benchmark.reads = reads
            benchmark.queueDepths = try parseTokenList(queueDepths, option: "--queue-depths")
            benchmark.sequentialMiB = sequentialMiB
            benchmark.rounds = rounds
            benchmark.seed = seed
            let (output, table) = try benchmark.run()
            FileHandle.standardError.write(Data(table.utf8))
            try printJSON(output)
        }
    }
}

/// `moe-serve bench kernels`: `KernelBenchmark`.
struct BenchKernelsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels", abstract: "Measure memory bandwidth and GEMV throughput (JSON on stdout, table on stderr).")

    @Option(help: "Rows of the test matrix.") var rows = 4096
    @Option(help: "Columns of the test matrix.") var cols = 4096
    @Option(help: "Repetitions; the median is reported.") var repetitions = 15
    @Flag(name: .customLong("mxfp4"), help: "Measure only the MXFP4 expert kernel at gpt-oss-20b's expert shapes (MXFP4KernelBenchmark).")
    var mxfp4 = false
    @Option(name: .customLong("token-rows"), help: "With --mxfp4: comma-separated token rows per product.") var tokenRows: String?
    @Option(help: "With --mxfp4: experts in the pool (13.2 MB each).") var experts: Int?
    @Option(name: .customLong("ggml"), help: "Measure only the integer-dot kernels of these ggml types against their float path (comma-separated, e.g. q4_1,q5_0,q5_1,iq4_nl,q3_k,iq4_xs; 'all' for these six).")
    var ggml: String?
    @Flag(name: .customLong("sampler"), help: "Measure only the token sampler: microseconds per draw at vocabularies of 4,096 to 201,088 ids (SamplerBenchmark).")
    var sampler = false

    func run() throws {
        try reportingErrors {
            if sampler {
                var benchmark = SamplerBenchmark()
                benchmark.repetitions = repetitions
                let (rows, table) = benchmark.run()
                FileHandle.standardError.write(Data(table.utf8))
                try printJSON(rows)
                return
            }
            if let ggml {
                var benchmark = GGMLKernelBenchmark(rows: rows, cols: cols, repetitions: repetitions)
                if ggml != "all" {
                    benchmark.types = try ggml.split(separator: ",").map { name in
                        guard let type = GGMLKernelBenchmark.type(named: String(name)) else {
                            throw CommandError("--ggml: unknown or unsupported type '\(name)' (one of q4_1, q5_0, q5_1, iq4_nl, q3_k, iq4_xs)")
                        }
                        return type
                    }
                }
                let (result, table) = try benchmark.run()
                FileHandle.standardError.write(Data(table.utf8))
                try printJSON(result)
                return
            }
            if mxfp4 {
                var benchmark = MXFP4KernelBenchmark()
                benchmark.repetitions = repetitions
                if let tokenRows { benchmark.tokenRows = try parseTokenList(tokenRows, option: "--token-rows") }
                if let experts { benchmark.experts = experts }
                let (result, table) = try benchmark.run()
                FileHandle.standardError.write(Data(table.utf8))
                try printJSON(result)
                return
            }
            let (result, table) = try KernelBenchmark(rows: rows, cols: cols, repetitions: repetitions).run()
            FileHandle.standardError.write(Data(table.utf8))
            try printJSON(result)
        }
    }
}

/// `moe-serve bench trace TRACE.jsonl --cache-per-layer C`: `TraceBenchmark`.
struct TraceBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace", abstract: "Replay a routing trace through every cache policy and Belady's optimum.")

    @Argument(help: "A routing trace, one JSON object per token (see `generate --record-trace`).") var trace: String
    @Option(name: .customLong("cache-per-layer"), help: "Experts each layer's cache holds.") var cachePerLayer: Int?
    @Option(name: .customLong("cache-bytes"), help: "Total cache size (e.g. 2GiB), split evenly over the recorded layers; needs --expert-bytes.") var cacheBytes: String?
    @Option(name: .customLong("expert-bytes"), help: "Bytes of one expert, with --cache-bytes.") var expertBytes: String?
    @Option(name: .customLong("floor"), help: "Experts per layer protected in the shared pool (default: the trace's top-k).") var floor: Int?
    @Option(name: .customLong("shallow-layers"), help: "Layers Fate favours (default: the first quarter of the recorded layers).") var shallowLayers: Int?
    @Option(name: .customLong("sequences"), help: "Replay as this many sequences decoding together, e.g. 1,8,32,64: each step requests a layer's union, in one pool shared by all layers; reports experts read per token against one sequence.") var sequences: String?
    @Flag(name: .customLong("as-recorded"), help: "Replay the trace's engine steps through the shared-pool policies: as recorded (bench batch --record-trace: batches and prefill steps as they ran), or for a trace without steps each prompt's prefill as one step, as generate runs it.") var asRecorded = false

    func run() throws {
        try reportingErrors {
            let size: TraceBenchmark.CacheSize
            switch (cachePerLayer, cacheBytes, expertBytes) {
            case (let c?, nil, nil):
                size = .perLayer(c)
            case (nil, let total?, let each?):
                size = .bytes(total: try parseByteSize(total, option: "--cache-bytes"), expert: try parseByteSize(each, option: "--expert-bytes"))
            default:
                throw CommandError("give either --cache-per-layer C, or --cache-bytes B with --expert-bytes E")
            }
            let routing = try RoutingTrace(contentsOf: URL(fileURLWithPath: trace))
            guard !routing.tokens.isEmpty else { throw CommandError("\(trace): the trace has no tokens") }
            guard !routing.recordedLayers.isEmpty else { throw CommandError("\(trace): no layer of the trace was recorded") }
            let benchmark = TraceBenchmark(trace: routing, cacheSize: size, floor: floor, shallowLayers: shallowLayers)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            var data: Data
            let table: String
            if asRecorded {
                guard sequences == nil else { throw CommandError("--as-recorded replays the batches the trace recorded: leave out --sequences") }
                let (output, text) = try benchmark.runRecorded()
                data = try encoder.encode(output)
                table = text
            } else if let sequences {
                let counts = try sequences.split(separator: ",").map { part -> Int in
                    guard let count = Int(part.trimmingCharacters(in: .whitespaces)), count >= 1 else {
                        throw CommandError("--sequences: expected counts of at least 1 separated by commas (e.g. 1,8,32,64), got '\(sequences)'")
                    }
                    return count
                }
                let (output, text) = try benchmark.runBatched(sequences: counts)
                data = try encoder.encode(output)
                table = text
            } else {
                let (output, text) = try benchmark.run()
                data = try encoder.encode(output)
                table = text
            }
            data.append(0x0A)
            FileHandle.standardOutput.write(data)
            FileHandle.standardError.write(Data(table.utf8))
        }
    }
}

/// `moe-serve bench decode`: `DecodeBenchmark`.
struct BenchDecodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "Prefill and decode speed under a memory budget, against the physical bound (JSON on stdout, table on stderr).")

    @OptionGroup var model: ModelOption
    @Option(name: .customLong("prompt-tokens"), help: "Prompt length (pp).") var promptTokens = 512
    @Option(name: .customLong("gen-tokens"), help: "Decode steps (tg).") var genTokens = 128
    @Option(help: "Runs per configuration; medians are reported.") var runs = 5
    @Flag(help: "Also measure load-on-demand (no prefetch, LRU) in the same run.") var baseline = false
    @Option(name: .customLong("perfect-predictor"), help: "Also measure a perfect predictor reading this many MoE layers ahead (it replays the routing a recording run of the same seeded generation made), in the same run.")
    var perfectPredictor: Int?
    @Flag(name: .customLong("perfect-beside-real"), help: "With --perfect-predictor: also measure the perfect predictor's reads added to the real predictor's.")
    var perfectBesideReal = false
    @Option(help: "Draw decode tokens/s against the budget into this SVG file (uses --plot-budgets).") var plot: String?
    @Option(name: .customLong("plot-budgets"), help: "Budgets for --plot, e.g. 2GiB,3GiB,4GiB,6GiB.") var plotBudgets: String?
    @Option(help: "Seed of the random prompt.") var seed: UInt64 = 1
    @OptionGroup var runtimeOptions: RuntimeOptions
    @OptionGroup var lossy: LossyOptions

    func validate() throws {
        guard promptTokens >= 1, genTokens >= 2, runs >= 1 else { throw ValidationError("--prompt-tokens ≥ 1, --gen-tokens ≥ 2, --runs ≥ 1") }
        if plot != nil && plotBudgets == nil { throw ValidationError("--plot needs --plot-budgets") }
        if perfectBesideReal && perfectPredictor == nil { throw ValidationError("--perfect-beside-real needs --perfect-predictor") }
        if let perfectPredictor, perfectPredictor < 1 { throw ValidationError("--perfect-predictor: expected 1 or more MoE layers ahead, got \(perfectPredictor)") }
    }

    func run() throws {
        try reportingErrors {
            var benchmark = DecodeBenchmark(specification: try runtimeOptions.checkedSpecification(model: try model.resolvedURL()))
            benchmark.promptTokens = promptTokens
            benchmark.genTokens = genTokens
            benchmark.runs = runs
            benchmark.baseline = baseline
            benchmark.perfectPredictorDepth = perfectPredictor
            benchmark.perfectBesideReal = perfectBesideReal
            benchmark.seed = seed
            benchmark.skipMissingBelow = lossy.skipMissingBelow
            benchmark.lowBitMisses = try lossy.lowBitMissesOn()
            if plot != nil, let plotBudgets {
                benchmark.plotBudgets = try plotBudgets.split(separator: ",").map { try parseByteSize(String($0), option: "--plot-budgets") }
            }
            let (output, table, svg) = try benchmark.run()
            if let plot, let svg {
                try svg.write(toFile: plot, atomically: true, encoding: .utf8)
                printError("bench decode: plot written to \(plot)")
            }
            FileHandle.standardError.write(Data(table.utf8))
            try printJSON(output)
        }
    }
}

/// `moe-serve bench batch`: `BatchBenchmark`.
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
    @Option(name: .customLong("record-trace"), help: "Directory: write each run's routing, step by step, to DIR/batch-<N>seq-prefetch-<on|off>-run<R>.jsonl (replay with bench trace --as-recorded).")
    var recordTrace: String?
    @OptionGroup var runtimeOptions: RuntimeOptions
    @OptionGroup var lossy: LossyOptions

    func run() throws {
        try reportingErrors {
            var benchmark = BatchBenchmark(specification: try runtimeOptions.checkedSpecification(model: try model.resolvedURL()))
            benchmark.sequences = try parseTokenList(sequences, option: "--sequences")
            benchmark.genTokens = genTokens
            benchmark.promptTokens = promptTokens
            if let prompts {
                benchmark.prompts = try readPromptFile(prompts)
                if benchmark.prompts!.isEmpty { throw CommandError("\(prompts): no prompts") }
            }
            benchmark.temperature = temperature
            benchmark.seed = seed
            benchmark.runs = runs
            benchmark.comparePrefetch = comparePrefetch
            if let recordTrace {
                var isDirectory: ObjCBool = false
                if !FileManager.default.fileExists(atPath: recordTrace, isDirectory: &isDirectory) {
                    try FileManager.default.createDirectory(atPath: recordTrace, withIntermediateDirectories: true)
                } else if !isDirectory.boolValue {
                    throw CommandError("--record-trace \(recordTrace): not a directory")
                }
                benchmark.traceDirectory = URL(fileURLWithPath: recordTrace, isDirectory: true)
            }
            benchmark.skipMissingBelow = lossy.skipMissingBelow
            benchmark.lowBitMisses = try lossy.lowBitMissesOn()
            let (report, table) = try benchmark.run()
            FileHandle.standardError.write(Data(table.utf8))
            try printJSON(report)
        }
    }
}

/// `moe-serve bench predictor`: `PredictorBenchmark`.
struct BenchPredictorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predictor", abstract: "Recall and precision of the expert predictors (JSON on stdout, table on stderr).")

    @OptionGroup var model: ModelOption
    @Option(help: "File with one JSON string per line, each a prompt.") var prompts: String
    @Option(name: .customLong("max-tokens"), help: "Tokens generated per prompt.") var maxTokens = 64
    @OptionGroup var runtimeOptions: RuntimeOptions

    func run() throws {
        try reportingErrors {
            let texts = try readPromptFile(prompts)
            let spec = try runtimeOptions.checkedSpecification(model: try model.resolvedURL())
            let (output, table) = try PredictorBenchmark(specification: spec, prompts: texts, maxTokens: maxTokens).run()
            FileHandle.standardError.write(Data(table.utf8))
            try printJSON(output)
        }
    }
}
