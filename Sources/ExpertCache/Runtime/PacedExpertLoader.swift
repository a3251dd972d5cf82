import Foundation
import ModelFormats

/// A loader whose reads take as long as they would on a disk of one fixed rate that reads one
/// thing at a time: each read is given the next free span of `bytes ÷ rate` on an emulated
/// device clock and returns no earlier than that span's end (`MOE_DISK_MBPS`, for benchmarks).
///
/// Why: the cloud disk the benchmarks run on swings 0.7-3 GB/s from minute to minute, and a
/// cgroup throttle is a token bucket that lets a read burst after the disk stood idle, which
/// hides what prefetching is for (reading while the disk would otherwise idle). A device
/// clock gives neither: time the disk stands idle is lost, as on a drive of fixed bandwidth.
/// With the model in RAM (`/dev/shm`, read buffered) the underlying reads cost almost nothing
/// and the emulated rate is the whole cost (docs/BENCHMARKS.md, "Session 26").
public final class PacedExpertLoader: ExpertLoader, @unchecked Sendable {
    private let base: any ExpertLoader
    /// The emulated device's rate.
    public let bytesPerSecond: Double
    private let lock = NSLock()
    /// When the emulated device finishes the reads given to it so far (uptime, ns).
    private var freeAt: UInt64 = 0
    private let now: @Sendable () -> UInt64
    private let sleepUntil: @Sendable (UInt64) -> Void

    /// Wraps `base`. `now` and `sleepUntil` are the clock (uptime in nanoseconds) and the wait;
    /// tests pass their own.
    public init(base: any ExpertLoader, bytesPerSecond: Double,
                now: @escaping @Sendable () -> UInt64 = { DispatchTime.now().uptimeNanoseconds },
                sleepUntil: @escaping @Sendable (UInt64) -> Void = PacedExpertLoader.sleep(until:)) {
        precondition(bytesPerSecond > 0)
        self.base = base
        self.bytesPerSecond = bytesPerSecond
        self.now = now
        self.sleepUntil = sleepUntil
    }

    /// The end of the span the emulated device gives a read of `bytes` that starts now.
    func reserveSpan(bytes: Int) -> UInt64 {
        let start = now()
        lock.lock()
        defer { lock.unlock() }
        freeAt = max(start, freeAt) + UInt64((Double(bytes) / bytesPerSecond * 1e9).rounded())
        return freeAt
    }

    private func paced(bytes: Int, _ read: () throws -> ExpertWeights) throws -> ExpertWeights {
        let done = reserveSpan(bytes: bytes)
        let weights = try read()
        sleepUntil(done)
        return weights
    }

    public static func sleep(until deadline: UInt64) {
        let current = DispatchTime.now().uptimeNanoseconds
        guard deadline > current else { return }
        var wait = timespec(tv_sec: Int((deadline - current) / 1_000_000_000), tv_nsec: Int((deadline - current) % 1_000_000_000))
        var left = timespec()
        while nanosleep(&wait, &left) != 0 && errno == EINTR { wait = left }
    }

    public func expertByteCount(layer: Int, expert: Int) -> Int { base.expertByteCount(layer: layer, expert: expert) }
    /// Read whole: an early copy would arrive before its emulated time. The wait for the
    /// transfer's end comes before the base loader checks and decodes the bytes, so that work
    /// takes its own time after the transfer, as on a real device (before session 33 it ran inside
    /// the emulated transfer and a checksum cost the read nothing).
    public func loadExpert(layer: Int, expert: Int) throws -> ExpertWeights {
        let done = reserveSpan(bytes: base.expertByteCount(layer: layer, expert: expert))
        return try base.loadExpert(layer: layer, expert: expert) { sleepUntil(done) }
    }
    public func lowBitByteCount(layer: Int, expert: Int) -> Int? { base.lowBitByteCount(layer: layer, expert: expert) }
    public func loadLowBitExpert(layer: Int, expert: Int) throws -> ExpertWeights {
        try paced(bytes: base.lowBitByteCount(layer: layer, expert: expert) ?? 0) { try base.loadLowBitExpert(layer: layer, expert: expert) }
    }
    public func expectReads(bytes: Int) { base.expectReads(bytes: bytes) }
    public func noReadsExpected() { base.noReadsExpected() }
    /// Not paced: warming maps and faults in memory, it reads nothing from the device.
    public func warmBuffers(limit: Int, shouldWarm: (_ warmBytes: Int) -> Bool) -> Int { base.warmBuffers(limit: limit, shouldWarm: shouldWarm) }
    public func dropWarmBuffers() { base.dropWarmBuffers() }

    /// `MOE_DISK_MBPS`: the emulated rate in MB/s (10⁶ bytes), if set; an invalid value is an error.
    public static func environmentRate(_ value: String? = ProcessInfo.processInfo.environment["MOE_DISK_MBPS"]) throws -> Double? {
        guard let value, !value.isEmpty else { return nil }
        guard let rate = Double(value), rate > 0, rate.isFinite else {
            throw ExpertCacheError("MOE_DISK_MBPS: expected a positive number of MB/s, got '\(value)'")
        }
        return rate * 1e6
    }
}
