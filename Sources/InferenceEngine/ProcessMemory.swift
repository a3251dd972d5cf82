import Foundation

/// The process's own memory, read from `/proc/self` (Linux). The memory budget is honest
/// only if the resident set is measured, not assumed.
public enum ProcessMemory {
    /// Allowance on top of the footprint measured before loading: reader and engine thread
    /// stacks, per-thread malloc arenas, OpenBLAS's per-thread GEMM buffers as they are
    /// touched, and code pages first run during generation. Measured on the demo model: the
    /// resident set grows by 6–9 MiB between start-up and the end of a generation beyond
    /// what the plan itemises.
    public static let runtimeAllowanceBytes = 16 << 20

    /// Pins glibc's mmap threshold at 128 KiB and limits malloc to two arenas. By default glibc raises the threshold after the first large
    /// free and serves later large blocks (logits, per-step activations) from heap arenas that
    /// fragment and are never returned, so the resident set drifts above the plan. Call once,
    /// at start-up, before any thread starts.
    public static func configureAllocator() {
        // mallopt is not in Swift's Glibc module (it lives in malloc.h); look it up instead.
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        let mmapThreshold: Int32 = -3 // M_MMAP_THRESHOLD in malloc.h
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "mallopt") else { return }
        let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
        _ = mallopt(mmapThreshold, 128 << 10)
        // Two heap arenas instead of up to eight per core: every thread that allocates (engine,
        // readers, libuv, GCD workers) otherwise gets its own arena, each holding freed memory.
        let arenaMax: Int32 = -8 // M_ARENA_MAX
        _ = mallopt(arenaMax, 2)
    }

    /// Bytes resident now (`VmRSS`), or nil where /proc is missing.
    public static func residentBytes() -> Int? { statusField("VmRSS") }

    /// The peak resident set so far (`VmHWM`), or nil where /proc is missing.
    public static func peakResidentBytes() -> Int? { statusField("VmHWM") }

    /// What a memory plan reserves for the process itself: its resident set now (call it
    /// before loading any weights) plus `runtimeAllowanceBytes`.
    public static func runtimeReservation() -> Int {
        (residentBytes() ?? 0) + runtimeAllowanceBytes
    }

    /// A `kB` field of /proc/self/status, in bytes.
    private static func statusField(_ name: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(name + ":") {
            let number = line.dropFirst(name.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first
            return number.flatMap { Int($0) }.map { $0 * 1024 }
        }
        return nil
    }
}
