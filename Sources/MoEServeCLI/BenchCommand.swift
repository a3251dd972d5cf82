import ArgumentParser

/// `moe-serve bench ...`: benchmarks; JSON results on stdout, a human table on stderr.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Run a benchmark.",
        subcommands: [TraceBenchCommand.self])
}
