import Foundation
import ModelFormats
import TensorMath

/// `--low-bit-misses auto` (docs/LOSSY.md "On a slower disk"): picks between the exact path
/// with prefetch and the slow-disk setting (low-bit copies for misses, prefetch off, never
/// promote, half the budget for copies) from how long reading an expert takes against
/// computing it. Measured on the widened demo: at ~1-1.5 GB/s exact with prefetch decodes
/// fastest; at 200 MB/s the slow-disk setting decoded 1.21x faster than the best exact mode.
public enum LowBitAuto {
    /// What the rule chose.
    public enum Mode: String, Sendable, Equatable {
        /// Exact experts, prefetch as configured.
        case exact
        /// Low-bit copies for misses, prefetch off, never promote, `slowDiskShare` of the budget.
        case slowDisk = "slow-disk"
    }

    /// The decision and what it was made from (logged at start and exported in `/metrics`).
    public struct Decision: Sendable, Equatable {
        public var mode: Mode
        /// The disk's measured bandwidth, bytes/s (nil when nothing measured it).
        public var diskBytesPerSecond: Double?
        /// Expert weight bytes the CPU multiplies per second for one token (nil when unmeasured).
        public var computeBytesPerSecond: Double?
        /// Why, in a few words.
        public var reason: String

        /// Reading an expert takes this many times longer than computing it (nil without both rates).
        public var readToComputeRatio: Double? {
            guard let d = diskBytesPerSecond, let c = computeBytesPerSecond, d > 0 else { return nil }
            return c / d
        }
    }

    /// Read time over compute time at and above which the slow-disk setting is chosen.
    /// Calibrated on the widened demo (docs/LOSSY.md): the ratio measured 12-17 at this
    /// machine's 1.4-1.9 GB/s, where exact with prefetch wins, and 121-135 at 200 MB/s, where
    /// the slow-disk setting wins; 40 is near their geometric mean, ~3x from each.
    public static let slowDiskRatio = 40.0
    /// The low-bit pool's share of the budget in the slow-disk setting (measured best: 0.5).
    public static let slowDiskShare = 0.5
    /// "Never promote" in the slow-disk setting: promotions' full reads cost a slow disk more than they save.
    public static let slowDiskPromoteAfter = 1_000_000

    /// The rule: the slow-disk setting when the store has low-bit copies and reading an expert
    /// takes at least `threshold` times as long as computing it; exact otherwise, including
    /// when either rate is unknown (auto never turns lossy without a measurement).
    public static func decide(diskBytesPerSecond: Double?, computeBytesPerSecond: Double?, hasLowBitCopies: Bool,
                              threshold: Double = slowDiskRatio) -> Decision {
        var decision = Decision(mode: .exact, diskBytesPerSecond: diskBytesPerSecond,
                                computeBytesPerSecond: computeBytesPerSecond, reason: "")
        guard hasLowBitCopies else {
            decision.reason = "the store has no low-bit copies"
            return decision
        }
        guard let ratio = decision.readToComputeRatio, ratio.isFinite, (computeBytesPerSecond ?? 0) > 0 else {
            decision.reason = "no bandwidth measurement (the reader-sizing probe did not run)"
            return decision
        }
        if ratio >= threshold {
            decision.mode = .slowDisk
            decision.reason = String(format: "reading an expert takes %.1fx as long as computing it (>= %.0f)", ratio, threshold)
        } else {
            decision.reason = String(format: "reading an expert takes %.1fx as long as computing it (< %.0f)", ratio, threshold)
        }
        return decision
    }
}

extension OffloadingExpertCache {
    /// Expert weight bytes the CPU multiplies per second for one token: expert 0 of the first
    /// MoE layer (read through the cache, so it counts one miss) runs gate, up and down on one
    /// row, repeated for about `seconds`. Nil without MoE layers.
    public func measureExpertComputeRate(seconds: Double = 0.05) throws -> Double? {
        guard let layer = moeLayers.first else { return nil }
        var rate: Double?
        try withExperts(layer: layer, experts: [0]) { _, expert in
            let x = AlignedBuffer<Float>(count: max(expert.gate.cols, expert.down.cols)) // [1, hidden or width]
            for i in 0..<x.count { x.pointer[i] = Float(sin(Double(i))) * 0.1 }
            let gate = AlignedBuffer<Float>(count: expert.gate.rows) // [1, width]
            let up = AlignedBuffer<Float>(count: expert.up.rows)     // [1, width]
            let out = AlignedBuffer<Float>(count: expert.down.rows)  // [1, hidden]
            func once() {
                expert.gate.apply(x.pointer, rowCount: 1, into: gate.pointer)
                expert.up.apply(x.pointer, rowCount: 1, into: up.pointer)
                expert.down.apply(gate.pointer, rowCount: 1, into: out.pointer)
            }
            once() // warm the weights into the CPU caches' path and the kernels' scratch
            let begin = DispatchTime.now().uptimeNanoseconds
            var runs = 0
            var elapsed = 0.0
            repeat {
                once()
                runs += 1
                elapsed = Double(DispatchTime.now().uptimeNanoseconds - begin) / 1e9
            } while elapsed < seconds
            rate = Double(expert.byteCount * runs) / elapsed
        }
        return rate
    }
}
