import ArgumentParser
import Runtime

/// Opt-in lossy options of commands that run a model (`generate`, `perplexity`, `bench
/// decode`, `bench batch`); every one is off by default, so runs are exact unless asked.
/// Kept apart from `RuntimeOptions` so that the quality cost of each is measured and named
/// (docs/LOSSY.md).
struct LossyOptions: ParsableArguments {
    @Option(name: .customLong("skip-missing-below"), help: "Lossy: skip a routed expert that is not in RAM when its layer runs if its router weight is below this (0...1), renormalising the rest; off by default.")
    var skipMissingBelow: Float?

    func validate() throws {
        if let skipMissingBelow, !(0...1).contains(skipMissingBelow) {
            throw ValidationError("--skip-missing-below: expected a weight in 0...1, got \(skipMissingBelow)")
        }
    }

    /// Applies the options to `runtime`'s expert cache. With every expert in RAM (no cache)
    /// nothing is ever missing, so skipping has nothing to do.
    func apply(to runtime: ModelRuntime) {
        runtime.cache?.skipMissingBelow = skipMissingBelow
    }
}
