import ArgumentParser

/// `moe-serve bench ...`: benchmarks; JSON on stdout, a human table on stderr.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks (JSON on stdout, a table on stderr).",
        subcommands: [BenchIOCommand.self, BenchKernelsCommand.self, TraceBenchCommand.self, BenchPredictorCommand.self, BenchBatchCommand.self,
                      BenchDecodeCommand.self])
}
