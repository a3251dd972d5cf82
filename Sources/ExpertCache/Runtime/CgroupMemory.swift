import Foundation

/// The memory limit of the control group this process runs in, and what is used against it.
///
/// Why: in a container (Docker's `--memory`, a Kubernetes `resources.limits.memory`, a systemd
/// unit's `MemoryMax=`) `/proc/meminfo` still shows the host's memory, so `--memory-budget auto`
/// reading only `MemAvailable` would size itself from RAM the process may not use and meet the
/// OOM killer. The tightest limit over the process's cgroup and its ancestors is what counts.
///
/// Usage is counted as the kubelet counts a container's working set: the cgroup's charge minus
/// its inactive file pages (page cache the kernel drops before it reclaims anything else);
/// cgroup v1 charges the page cache a process brings in to its cgroup, v2 too.
public struct CgroupMemory: Sendable, Equatable {
    /// The tightest memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`).
    public var limitBytes: Int
    /// The charge against that limit less inactive file pages, at the level that sets it.
    public var usageBytes: Int
    /// `some avg10` of the cgroup's own `memory.pressure` (v2 only), nil where absent.
    public var pressurePercent: Double?

    /// What is left under the limit.
    public var availableBytes: Int { max(0, limitBytes - usageBytes) }

    /// A limit of `limitBytes` with `usageBytes` used.
    public init(limitBytes: Int, usageBytes: Int, pressurePercent: Double? = nil) {
        self.limitBytes = limitBytes
        self.usageBytes = usageBytes
        self.pressurePercent = pressurePercent
    }

    /// Limits at or above this are "no limit" (v1 writes LONG_MAX rounded down to a page).
    static let unlimited = 1 << 60

    /// Reads the limit of the cgroup named in `procSelfCgroup` (the text of /proc/self/cgroup)
    /// under the hierarchy mounted at `root`; `read` returns a file's text or nil. nil when no
    /// level of the hierarchy sets a memory limit.
    ///
    /// cgroup v1 (a `N:memory:/path` or `N:...,memory,...:/path` line) is preferred where it is
    /// mounted, as on hybrid hosts the memory controller lives there; otherwise v2 (`0::/path`).
    /// Every level from the process's cgroup up to the hierarchy's root is checked, as every
    /// ancestor's limit applies; a path that does not exist under `root` (a cgroup namespace,
    /// where the container's own cgroup is mounted as the root) falls back to the root itself.
    public static func read(procSelfCgroup: String, root: String = "/sys/fs/cgroup",
                            read: (String) -> String?) -> CgroupMemory? {
        var v1Path: String?
        var v2Path: String?
        for line in procSelfCgroup.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            if fields[0] == "0" && fields[1].isEmpty { v2Path = String(fields[2]) }
            if fields[1].split(separator: ",").contains("memory") { v1Path = String(fields[2]) }
        }
        if let v1Path, read("\(root)/memory/memory.limit_in_bytes") != nil {
            return tightest(base: "\(root)/memory", path: v1Path, marker: "memory.limit_in_bytes", read: read) { dir in
                guard let limit = read("\(dir)/memory.limit_in_bytes").flatMap(integer),
                      let usage = read("\(dir)/memory.usage_in_bytes").flatMap(integer) else { return nil }
                let inactive = read("\(dir)/memory.stat").flatMap { statField($0, "total_inactive_file") } ?? 0
                return CgroupMemory(limitBytes: limit, usageBytes: max(0, usage - inactive))
            }
        }
        if let v2Path {
            return tightest(base: root, path: v2Path, marker: "cgroup.controllers", read: read) { dir in
                guard let limitText = read("\(dir)/memory.max"),
                      let usage = read("\(dir)/memory.current").flatMap(integer) else { return nil }
                let limit = limitText.trimmingCharacters(in: .whitespacesAndNewlines) == "max" ? unlimited : (integer(limitText) ?? unlimited)
                let inactive = read("\(dir)/memory.stat").flatMap { statField($0, "inactive_file") } ?? 0
                let pressure = read("\(dir)/memory.pressure").flatMap(MemoryReading.pressurePercent(psi:))
                return CgroupMemory(limitBytes: limit, usageBytes: max(0, usage - inactive), pressurePercent: pressure)
            }
        }
        return nil
    }

    /// The level with the least available memory among those with a limit, from `path` up to
    /// `base`; the highest pressure any level reports is kept. `marker` is a file every cgroup
    /// directory of the hierarchy has (to tell a missing directory from a level without limits).
    private static func tightest(base: String, path: String, marker: String, read: (String) -> String?,
                                 level: (String) -> CgroupMemory?) -> CgroupMemory? {
        var components = path.split(separator: "/").map(String.init)
        // Under a cgroup namespace the named path is not there: the mount is the process's own.
        if !components.isEmpty && read(base + "/" + components.joined(separator: "/") + "/" + marker) == nil { components = [] }
        var best: CgroupMemory?
        var pressure: Double?
        while true {
            let dir = components.isEmpty ? base : base + "/" + components.joined(separator: "/")
            if let reading = level(dir) {
                if let p = reading.pressurePercent { pressure = max(pressure ?? 0, p) }
                if reading.limitBytes < unlimited && (best.map { reading.availableBytes < $0.availableBytes } ?? true) {
                    best = reading
                }
            }
            if components.isEmpty { break }
            components.removeLast()
        }
        best?.pressurePercent = pressure
        return best
    }

    private static func integer(_ text: String) -> Int? {
        Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    private static func statField(_ stat: String, _ name: String) -> Int? {
        for line in stat.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count == 2 && fields[0] == name { return Int(fields[1]) }
        }
        return nil
    }

    /// This process's cgroup memory limit now; nil outside a limited cgroup or without /proc.
    public static func current() -> CgroupMemory? {
        guard let cgroup = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8) else { return nil }
        return read(procSelfCgroup: cgroup) { try? String(contentsOfFile: $0, encoding: .utf8) }
    }
}
