import Foundation
import ArgumentParser
import ExpertCache
import ModelFormats
import Runtime

/// Opt-in lossy options of commands that run a model (`generate`, `perplexity`, `bench
/// decode`, `bench batch`); every one is off by default, so runs are exact unless asked.
/// Kept apart from `RuntimeOptions` so that the quality cost of each is measured and named
/// (docs/LOSSY.md).
struct LossyOptions: ParsableArguments {
    @Option(name: .customLong("skip-missing-below"), help: "Lossy: skip a routed expert that is not in RAM when its layer runs if its router weight is below this (0...1), renormalising the rest; off by default.")
    var skipMissingBelow: Float?

    @Option(name: .customLong("low-bit-misses"), help: "Lossy: on to run an expert that is not in RAM from the store's low-bit copy (pack --low-bit-copies q2) and read its full copy in the background if it stays in use; auto to choose from the disk's measured bandwidth between exact with prefetch and the slow-disk setting (prefetch off, never promote, share 0.5); off by default.")
    var lowBitMisses: String = "off"

    @Option(name: .customLong("low-bit-share"), help: "With --low-bit-misses on: the share of the expert cache's budget that holds low-bit copies (0 < share < 1).")
    var lowBitShare: Double = LowBitMissSettings.default.share

    @Option(name: .customLong("low-bit-promote-after"), help: "With --low-bit-misses on: uses in a row (each within 8 calls of its layer) after which an expert's full copy is read in the background.")
    var lowBitPromoteAfter: Int = LowBitMissSettings.default.promoteAfter

    func validate() throws {
        if let skipMissingBelow, !(0...1).contains(skipMissingBelow) {
            throw ValidationError("--skip-missing-below: expected a weight in 0...1, got \(skipMissingBelow)")
        }
        guard ["on", "off", "auto"].contains(lowBitMisses) else { throw ValidationError("--low-bit-misses: expected on, off or auto, got \(lowBitMisses)") }
        guard lowBitShare > 0, lowBitShare < 1 else { throw ValidationError("--low-bit-share: expected a share between 0 and 1 (exclusive), got \(lowBitShare)") }
        guard lowBitPromoteAfter >= 1 else { throw ValidationError("--low-bit-promote-after: expected at least 1 use, got \(lowBitPromoteAfter)") }
    }

    /// Applies the options to `runtime`'s expert cache. With every expert in RAM (no cache)
    /// nothing is ever missing, so skipping has nothing to do.
    func apply(to runtime: ModelRuntime) throws {
        runtime.cache?.skipMissingBelow = skipMissingBelow
        if lowBitMisses == "on" {
            try Self.enableLowBitMisses(runtime, LowBitMissSettings(share: lowBitShare, promoteAfter: lowBitPromoteAfter))
        } else if lowBitMisses == "auto" {
            try Self.chooseLowBitMisses(runtime)
        }
    }

    /// Whether `--low-bit-misses` is on, for commands that take on or off only (`bench`).
    func lowBitMissesOn() throws -> Bool {
        guard lowBitMisses != "auto" else { throw ValidationError("--low-bit-misses auto: bench takes on or off; auto is for generate, perplexity and serve") }
        return lowBitMisses == "on"
    }

    /// `--low-bit-misses auto`: measures the expert compute rate, takes the disk's bandwidth
    /// from the reader-sizing probe that ran at open, lets `LowBitAuto.decide` pick exact or
    /// the slow-disk setting, applies it and logs it on stderr. Nil without an expert cache.
    @discardableResult
    static func chooseLowBitMisses(_ runtime: ModelRuntime) throws -> LowBitAuto.Decision? {
        guard let cache = runtime.cache else {
            printError("note: --low-bit-misses auto has nothing to do: every expert is in RAM")
            return nil
        }
        // The reader-sizing probe's best depth is the disk's bandwidth (the readers run near
        // it); without that probe (`--reader-threads` given), a short one at the readers' depth.
        var disk = runtime.readerSizing?.map(\.bytesPerSecond).max()
        if disk == nil, cache.hasLowBitCopies, let spec = runtime.specification, ExpertStore.isStore(at: spec.model) {
            let store = try ExpertStore(url: spec.model, checkDense: false, ioEngine: spec.ioEngine)
            disk = try ReaderSizing.measure(store: store, depths: [max(1, runtime.readerThreads ?? 4)])?.first?.bytesPerSecond
        }
        let hasCopies = cache.hasLowBitCopies
        var compute: Double?
        if hasCopies, disk != nil { compute = try cache.measureExpertComputeRate() }
        let decision = LowBitAuto.decide(diskBytesPerSecond: disk, computeBytesPerSecond: compute, hasLowBitCopies: hasCopies)
        if decision.mode == .slowDisk {
            cache.disablePrefetches()
            try enableLowBitMisses(runtime, LowBitMissSettings(share: LowBitAuto.slowDiskShare, promoteAfter: LowBitAuto.slowDiskPromoteAfter))
        }
        func rate(_ v: Double?) -> String { v.map { String(format: "%.0f MB/s", $0 / 1e6) } ?? "unmeasured" }
        printError("low-bit misses auto: \(decision.mode == .slowDisk ? "slow-disk setting (low-bit misses, prefetch off, never promote, share \(LowBitAuto.slowDiskShare))" : "exact")"
            + " — disk \(rate(disk)), expert compute \(rate(compute)); \(decision.reason)")
        runtime.lowBitAuto = decision
        return decision
    }

    /// Turns on low-bit misses on `runtime`'s expert cache; with every expert in RAM there are
    /// no misses, so it says so and does nothing.
    static func enableLowBitMisses(_ runtime: ModelRuntime, _ settings: LowBitMissSettings = .default) throws {
        guard let cache = runtime.cache else {
            printError("note: --low-bit-misses has nothing to do: every expert is in RAM")
            return
        }
        do { try cache.enableLowBitMisses(share: settings.share, promoteAfter: settings.promoteAfter) } catch { throw CommandError("\(error)") }
    }
}

/// The low-bit pool's share of the expert cache and the promotion rule (docs/LOSSY.md: the
/// defaults, and what other settings measured on the widened demo).
struct LowBitMissSettings {
    var share: Double
    var promoteAfter: Int
    static let `default` = LowBitMissSettings(share: 0.25, promoteAfter: 2)
}
