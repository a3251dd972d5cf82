import ArgumentParser
import InferenceEngine
import TensorMath

/// `moe-serve`: serve, pack, inspect and run Mixture-of-Experts models larger than RAM.
@main
struct MoEServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moe-serve",
        abstract: "Serve Mixture-of-Experts language models whose experts live on disk.",
        subcommands: [
            LogitsCommand.self,
            GenerateCommand.self,
            PerplexityCommand.self,
            ExportCommand.self,
            TokenizeCommand.self,
            DetokenizeCommand.self,
            PackCommand.self,
            LowBitCopiesCommand.self,
            WidenCommand.self,
            VerifyCommand.self,
            InspectCommand.self,
            SynthCommand.self,
            BenchCommand.self,
            ServeCommand.self,
        ],
        defaultSubcommand: ServeCommand.self
    )

    /// Sets up the allocator (so the resident set keeps to the memory plan), then parses and runs.
    static func main() {
        ProcessMemory.configureAllocator()
        WeightMatrix.configureThreading()
        main(nil)
    }
}
