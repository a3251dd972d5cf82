import ArgumentParser
import Runtime

/// Opt-in lossy options of commands that run a model (`generate`, `perplexity`, `bench
/// decode`, `bench batch`); every one is off by default, so runs are exact unless asked.
/// Kept apart from `RuntimeOptions` so that the quality cost of each is measured and named
/// (docs/LOSSY.md).
struct LossyOptions: ParsableArguments {
    @Option(name: .customLong("skip-missing-below"), help: "Lossy: skip a routed expert that is not in RAM when its layer runs if its router weight is below this (0...1), renormalising the rest; off by default.")
    var skipMissingBelow: Float?

    @Option(name: .customLong("low-bit-misses"), help: "Lossy: on to run an expert that is not in RAM from the store's low-bit copy (pack --low-bit-copies q2) and read its full copy in the background if it stays in use; off by default.")
    var lowBitMisses: String = "off"

    func validate() throws {
        if let skipMissingBelow, !(0...1).contains(skipMissingBelow) {
            throw ValidationError("--skip-missing-below: expected a weight in 0...1, got \(skipMissingBelow)")
        }
        guard ["on", "off"].contains(lowBitMisses) else { throw ValidationError("--low-bit-misses: expected on or off, got \(lowBitMisses)") }
    }

    /// Applies the options to `runtime`'s expert cache. With every expert in RAM (no cache)
    /// nothing is ever missing, so skipping has nothing to do.
    func apply(to runtime: ModelRuntime) throws {
        runtime.cache?.skipMissingBelow = skipMissingBelow
        if lowBitMisses == "on" { try Self.enableLowBitMisses(runtime) }
    }

    /// Turns on low-bit misses on `runtime`'s expert cache; with every expert in RAM there are
    /// no misses, so it says so and does nothing.
    static func enableLowBitMisses(_ runtime: ModelRuntime) throws {
        guard let cache = runtime.cache else {
            printError("note: --low-bit-misses has nothing to do: every expert is in RAM")
            return
        }
        do { try cache.enableLowBitMisses() } catch { throw CommandError("\(error)") }
    }
}
