import Foundation

/// `--memory-budget auto` as a pure state machine (issue 26 item 6): from what the machine
/// reports — free memory (`MemAvailable`, or less under a cgroup limit: `CgroupMemory`) and the
/// kernel's memory pressure-stall information (`/proc/pressure/memory`, `some avg10`) — it decides the expert cache's budget. No I/O and
/// no clock here: the caller samples (`MemoryReading.sample()`), calls `update`, and applies
/// a changed budget with `OffloadingExpertCache.resize(budgetBytes:)`.
///
/// Rules, checked in this order at every reading:
/// - **Shrink** when the system stalls on memory (`some avg10 ≥ pressureShrinkPercent`) or free
///   memory falls below `lowWatermarkBytes`: to what the cache holds (when below its budget)
///   less what is missing below the high watermark (at least one `stepBytes`), never below
///   `floorBytes` (what the plan needs to run at all).
///   Shrinking comes before the system is under pressure because the low watermark is reached
///   first on a machine that fills up gradually; PSI catches what the watermark misses (a
///   sudden burst, reclaim of the page cache).
/// - **Grow** when free memory stays above `highWatermarkBytes` and pressure is calm
///   (`≤ pressureCalmPercent`): by at most one `stepBytes` per reading and never past what is
///   free above the high watermark or past `ceilingBytes` (every expert cached).
/// - Otherwise **hold**: the gap between the watermarks is the hysteresis that keeps the
///   budget from oscillating when another program's use hovers at one threshold.
public struct MemoryBudgetController: Sendable, Equatable {
    /// One sample of the machine.
    public struct Reading: Sendable, Equatable {
        /// `MemAvailable` from /proc/meminfo.
        public var availableBytes: Int
        /// `some avg10` from /proc/pressure/memory (percent of the last 10 s some task stalled
        /// on memory); 0 where PSI is unavailable.
        public var pressurePercent: Double

        /// A reading of `availableBytes` free and `pressurePercent` stalled.
        public init(availableBytes: Int, pressurePercent: Double = 0) {
            self.availableBytes = availableBytes
            self.pressurePercent = pressurePercent
        }
    }

    /// What the controller keeps to.
    public struct Settings: Sendable, Equatable {
        /// The least budget: what the memory plan needs to run (`MemoryPlan` floor).
        public var floorBytes: Int
        /// The most budget worth having (every expert cached).
        public var ceilingBytes: Int
        /// Shrink below this much free memory.
        public var lowWatermarkBytes: Int
        /// Grow only above this much free memory.
        public var highWatermarkBytes: Int
        /// Largest growth per reading (and least shrink).
        public var stepBytes: Int
        /// Shrink at or above this PSI `some avg10`.
        public var pressureShrinkPercent: Double
        /// Grow only at or below this PSI `some avg10`.
        public var pressureCalmPercent: Double

        /// Settings between `floorBytes` and `ceilingBytes`; watermarks default to 5% and 10%
        /// of `totalBytes` (the machine's RAM), steps to 1/32 of it.
        public init(floorBytes: Int, ceilingBytes: Int, totalBytes: Int, lowWatermarkBytes: Int? = nil,
                    highWatermarkBytes: Int? = nil, stepBytes: Int? = nil,
                    pressureShrinkPercent: Double = 10, pressureCalmPercent: Double = 1) {
            self.floorBytes = floorBytes
            self.ceilingBytes = max(ceilingBytes, floorBytes)
            self.lowWatermarkBytes = lowWatermarkBytes ?? totalBytes / 20
            self.highWatermarkBytes = max(highWatermarkBytes ?? totalBytes / 10, self.lowWatermarkBytes)
            self.stepBytes = max(stepBytes ?? totalBytes / 32, 1)
            self.pressureShrinkPercent = pressureShrinkPercent
            self.pressureCalmPercent = pressureCalmPercent
        }
    }

    /// What the last reading decided.
    public enum Decision: String, Sendable, Equatable {
        case grow, shrink, hold
    }

    /// The settings.
    public let settings: Settings
    /// The budget now.
    public private(set) var budgetBytes: Int
    /// The last decision.
    public private(set) var lastDecision: Decision = .hold

    /// A controller starting at `initialBytes` (clamped to the floor and ceiling).
    public init(settings: Settings, initialBytes: Int) {
        self.settings = settings
        budgetBytes = min(max(initialBytes, settings.floorBytes), settings.ceilingBytes)
    }

    /// Takes one reading; returns the new budget if it changed. `cacheUsedBytes` is what the
    /// cache holds now: a shrink counts down from it when the cache has not filled its budget,
    /// since lowering an unfilled budget frees nothing (a neighbour growing at tens of MB/s
    /// would reach the limit before the budget came down to what is resident).
    @discardableResult
    public mutating func update(_ reading: Reading, cacheUsedBytes: Int? = nil) -> Int? {
        let s = settings
        let before = budgetBytes
        if reading.pressurePercent >= s.pressureShrinkPercent || reading.availableBytes < s.lowWatermarkBytes {
            let missing = s.highWatermarkBytes - reading.availableBytes
            let resident = min(budgetBytes, cacheUsedBytes ?? budgetBytes)
            budgetBytes = max(s.floorBytes, resident - max(missing, s.stepBytes))
            lastDecision = .shrink
        } else if reading.availableBytes > s.highWatermarkBytes && reading.pressurePercent <= s.pressureCalmPercent {
            let room = min(s.stepBytes, reading.availableBytes - s.highWatermarkBytes)
            budgetBytes = min(s.ceilingBytes, budgetBytes + room)
            lastDecision = .grow
        } else {
            lastDecision = .hold
        }
        return budgetBytes == before ? nil : budgetBytes
    }
}

/// Reads what `MemoryBudgetController` needs from /proc.
public enum MemoryReading {
    /// `MemAvailable` in bytes from /proc/meminfo text, nil if absent.
    public static func availableBytes(meminfo: String) -> Int? {
        for line in meminfo.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, let kib = Int(fields[1]) else { return nil }
            return kib * 1024
        }
        return nil
    }

    /// `some avg10` (percent) from /proc/pressure/memory text, nil if absent.
    public static func pressurePercent(psi: String) -> Double? {
        for line in psi.split(separator: "\n") where line.hasPrefix("some ") {
            for field in line.split(separator: " ") where field.hasPrefix("avg10=") {
                return Double(field.dropFirst("avg10=".count))
            }
        }
        return nil
    }

    /// What this process may still use: the machine's `MemAvailable` and PSI, narrowed by its
    /// cgroup's limit when it runs in one (less free, the higher pressure of the two).
    public static func combined(_ machine: MemoryBudgetController.Reading, cgroup: CgroupMemory?) -> MemoryBudgetController.Reading {
        guard let cgroup else { return machine }
        return .init(availableBytes: min(machine.availableBytes, cgroup.availableBytes),
                     pressurePercent: max(machine.pressurePercent, cgroup.pressurePercent ?? 0))
    }

    /// The machine now, as this process sees it: MemAvailable and (0 without PSI) memory
    /// pressure, narrowed by its cgroup's memory limit (`CgroupMemory`); nil without /proc/meminfo.
    public static func sample() -> MemoryBudgetController.Reading? {
        guard let meminfo = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
              let available = availableBytes(meminfo: meminfo) else { return nil }
        let psi = (try? String(contentsOfFile: "/proc/pressure/memory", encoding: .utf8)).flatMap(pressurePercent(psi:))
        return combined(.init(availableBytes: available, pressurePercent: psi ?? 0), cgroup: CgroupMemory.current())
    }
}
