import ExpertCache
import Foundation
import InferenceEngine

/// `--memory-budget auto` at run time (issue 26 item 6): samples the machine, feeds
/// `MemoryBudgetController` and moves the expert cache's budget with
/// `OffloadingExpertCache.resize(budgetBytes:)`. Everything but the expert cache (the process
/// itself, dense weights, scratch, KV cache) keeps the share the plan gave it at start; only the
/// expert cache follows the machine, between the least its floors need and every expert.
///
/// The readings come from a closure so that tests drive it without real memory pressure; the
/// server passes `MemoryReading.sample` (/proc/meminfo and /proc/pressure/memory).
public final class AutoMemoryBudget: @unchecked Sendable {
    /// Where readings come from; nil when nothing could be read (the budget holds).
    public typealias ReadingSource = @Sendable () -> MemoryBudgetController.Reading?

    /// The share of `MemAvailable` (or of what its cgroup's limit leaves) the process starts with under `auto` (then bounded by the
    /// plan's floor and by what caching every expert needs).
    public static let initialFraction = 0.5
    /// How often the server samples the machine. A reading is a few small /proc and cgroup
    /// files (tens of microseconds); at 4 per second a neighbour growing at 50 MB/s moves
    /// ~12 MB between readings, inside the 5-10% watermarks of any limit from 250 MB up.
    public static let defaultInterval: TimeInterval = 0.25

    /// The process budget `auto` starts from, given the machine's `MemAvailable`.
    public static func initialBudgetBytes(availableBytes: Int) -> Int {
        Int(Double(availableBytes) * initialFraction)
    }

    /// The memory this process could have at most (sizes the watermarks): `MemTotal`, or its
    /// cgroup's limit when tighter; nil without /proc/meminfo.
    public static func machineTotalBytes() -> Int? {
        guard let meminfo = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in meminfo.split(separator: "\n") where line.hasPrefix("MemTotal:") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, let kib = Int(fields[1]) else { return nil }
            return min(kib * 1024, CgroupMemory.current()?.limitBytes ?? Int.max)
        }
        return nil
    }

    private let cache: OffloadingExpertCache
    private let readings: ReadingSource
    /// The process budget minus the expert cache's share: fixed at start.
    public let otherBytes: Int
    private let lock = NSCondition()
    private var controller: MemoryBudgetController
    private var stopped = false
    private var thread: Thread?
    private var samples = 0

    /// Drives `cache` from `readings` with `settings`, starting at the cache's budget now;
    /// `otherBytes` is the rest of the process budget (reported beside the cache's share).
    public init(cache: OffloadingExpertCache, settings: MemoryBudgetController.Settings, otherBytes: Int, readings: @escaping ReadingSource) throws {
        self.cache = cache
        self.readings = readings
        self.otherBytes = otherBytes
        controller = MemoryBudgetController(settings: settings, initialBytes: cache.statistics().budgetBytes)
        // The controller clamps the start to [floor, ceiling]: a cache planned larger than
        // every expert gives the excess back at once.
        if controller.budgetBytes != cache.statistics().budgetBytes { try cache.resize(budgetBytes: controller.budgetBytes) }
    }

    /// The expert cache's budget now.
    public var expertCacheBudgetBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return controller.budgetBytes
    }

    /// The whole process's budget now: the fixed share plus the expert cache's.
    public var budgetBytes: Int { otherBytes + expertCacheBudgetBytes }

    /// The controller's settings (floor, ceiling, watermarks).
    public var settings: MemoryBudgetController.Settings { controller.settings }

    /// Readings taken so far.
    public var sampleCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return samples
    }

    /// Takes one reading and applies a changed budget to the cache; returns the new expert
    /// cache budget if it changed.
    @discardableResult
    public func step() throws -> Int? {
        guard let reading = readings() else { return nil }
        lock.lock()
        defer { lock.unlock() }
        samples += 1
        guard let changed = controller.update(reading, cacheUsedBytes: cache.statistics().usedBytes) else { return nil }
        // Under the lock so that two steps cannot apply their budgets out of order.
        try cache.resize(budgetBytes: changed)
        return changed
    }

    /// Samples every `interval` seconds on a background thread until `stop()`.
    public func start(interval: TimeInterval = AutoMemoryBudget.defaultInterval) {
        lock.lock()
        defer { lock.unlock() }
        guard thread == nil, !stopped else { return }
        let worker = Thread { [weak self] in
            while let self, self.waitForNextSample(self.nextInterval(interval)) {
                do { try self.step() } catch {
                    // The floor is the cache's own minimum, so resize cannot refuse; if it
                    // does, the budget holds and the server keeps serving.
                    FileHandle.standardError.write(Data("warning: memory budget auto: \(error)\n".utf8))
                }
            }
        }
        worker.name = "moe-memory-budget"
        thread = worker
        worker.start()
    }

    /// The time to the next reading: a quarter of `interval` while shrinking, so that a
    /// neighbour still growing meets a cache that keeps giving way.
    private func nextInterval(_ interval: TimeInterval) -> TimeInterval {
        lock.lock()
        defer { lock.unlock() }
        return controller.lastDecision == .shrink ? interval / 4 : interval
    }

    /// Waits `interval`; false once stopped.
    private func waitForNextSample(_ interval: TimeInterval) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        let deadline = Date().addingTimeInterval(interval)
        while !stopped && Date() < deadline { _ = lock.wait(until: deadline) }
        return !stopped
    }

    /// Stops the sampling thread (the budget stays where it is).
    public func stop() {
        lock.lock()
        stopped = true
        lock.broadcast()
        lock.unlock()
    }
}
