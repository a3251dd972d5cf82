import Testing
@testable import ExpertCache

/// `--memory-budget auto` inside a container: the cgroup's limit, not the host's MemAvailable,
/// bounds what the process may use. Driven by in-memory files shaped as the kernel writes them.
@Suite struct CgroupMemoryTests {
    static let mib = 1 << 20
    static let unlimitedV1 = "9223372036854771712"

    /// A fake /sys/fs/cgroup: path → contents.
    static func reader(_ files: [String: String]) -> (String) -> String? { { files[$0] } }

    @Test func cgroupV1TakesTheTightestAncestorAndDiscountsInactiveFilePages() throws {
        let base = "/sys/fs/cgroup/memory"
        let files = [
            "\(base)/memory.limit_in_bytes": Self.unlimitedV1, "\(base)/memory.usage_in_bytes": "\(9000 * Self.mib)",
            "\(base)/pods/memory.limit_in_bytes": "\(2048 * Self.mib)\n", "\(base)/pods/memory.usage_in_bytes": "\(1500 * Self.mib)\n",
            "\(base)/pods/memory.stat": "cache 1\ntotal_inactive_file \(300 * Self.mib)\n",
            "\(base)/pods/app/memory.limit_in_bytes": Self.unlimitedV1, "\(base)/pods/app/memory.usage_in_bytes": "\(700 * Self.mib)",
        ]
        let cgroup = "12:pids:/pods/app\n4:memory:/pods/app\n0::/\n"
        let memory = try #require(CgroupMemory.read(procSelfCgroup: cgroup, read: Self.reader(files)))
        #expect(memory.limitBytes == 2048 * Self.mib)
        #expect(memory.usageBytes == 1200 * Self.mib)   // 1500 charged − 300 inactive page cache
        #expect(memory.availableBytes == 848 * Self.mib)
        #expect(memory.pressurePercent == nil)
    }

    @Test func cgroupV1WithCombinedControllersIsFound() throws {
        let base = "/sys/fs/cgroup/memory"
        let files = ["\(base)/memory.limit_in_bytes": Self.unlimitedV1, "\(base)/memory.usage_in_bytes": "1",
                     "\(base)/job/memory.limit_in_bytes": "\(512 * Self.mib)", "\(base)/job/memory.usage_in_bytes": "\(100 * Self.mib)"]
        let memory = try #require(CgroupMemory.read(procSelfCgroup: "3:cpuacct,memory:/job\n", read: Self.reader(files)))
        #expect(memory.availableBytes == 412 * Self.mib)
    }

    @Test func cgroupV2ReadsMemoryMaxThroughTheHierarchyWithItsPressure() throws {
        let base = "/sys/fs/cgroup"
        let files = [
            "\(base)/cgroup.controllers": "cpu memory", "\(base)/memory.stat": "anon 1\n",
            "\(base)/system.slice/cgroup.controllers": "memory",
            "\(base)/system.slice/memory.max": "\(4096 * Self.mib)", "\(base)/system.slice/memory.current": "\(3000 * Self.mib)",
            "\(base)/system.slice/moe.service/cgroup.controllers": "",
            "\(base)/system.slice/moe.service/memory.max": "max\n", "\(base)/system.slice/moe.service/memory.current": "\(2000 * Self.mib)",
            "\(base)/system.slice/moe.service/memory.stat": "anon 5\ninactive_file \(500 * Self.mib)\nactive_file 7\n",
            "\(base)/system.slice/moe.service/memory.pressure": "some avg10=12.50 avg60=3.00 avg300=0.10 total=1\nfull avg10=1.00 avg60=0 avg300=0 total=1\n",
        ]
        let memory = try #require(CgroupMemory.read(procSelfCgroup: "0::/system.slice/moe.service\n", read: Self.reader(files)))
        #expect(memory.limitBytes == 4096 * Self.mib)          // the slice's limit applies to the service
        #expect(memory.availableBytes == 1096 * Self.mib)
        #expect(memory.pressurePercent == 12.5)                 // the service's own stall, kept from its level
    }

    @Test func aCgroupNamespaceReadsTheMountedRoot() throws {
        // Inside a container with its own cgroup namespace /proc/self/cgroup names a path the
        // container's /sys/fs/cgroup does not have: its root is the container's cgroup.
        let base = "/sys/fs/cgroup"
        let files = ["\(base)/cgroup.controllers": "memory", "\(base)/memory.max": "\(1024 * Self.mib)",
                     "\(base)/memory.current": "\(256 * Self.mib)"]
        let memory = try #require(CgroupMemory.read(procSelfCgroup: "0::/kubepods/burstable/pod1/abc\n", read: Self.reader(files)))
        #expect(memory.limitBytes == 1024 * Self.mib && memory.availableBytes == 768 * Self.mib)
    }

    @Test func noLimitAnywhereIsNil() {
        let base = "/sys/fs/cgroup/memory"
        let files = ["\(base)/memory.limit_in_bytes": Self.unlimitedV1, "\(base)/memory.usage_in_bytes": "1",
                     "\(base)/a/memory.limit_in_bytes": Self.unlimitedV1, "\(base)/a/memory.usage_in_bytes": "1"]
        #expect(CgroupMemory.read(procSelfCgroup: "4:memory:/a\n", read: Self.reader(files)) == nil)
        #expect(CgroupMemory.read(procSelfCgroup: "0::/\n", read: Self.reader(["/sys/fs/cgroup/cgroup.controllers": "", "/sys/fs/cgroup/memory.max": "max",
                                                                                "/sys/fs/cgroup/memory.current": "5"])) == nil)
        #expect(CgroupMemory.read(procSelfCgroup: "", read: Self.reader([:])) == nil)
    }

    @Test func theReadingIsTheNarrowerOfMachineAndCgroup() {
        let machine = MemoryBudgetController.Reading(availableBytes: 20_000 * Self.mib, pressurePercent: 0.5)
        let cgroup = CgroupMemory(limitBytes: 2048 * Self.mib, usageBytes: 1948 * Self.mib, pressurePercent: 15)
        let reading = MemoryReading.combined(machine, cgroup: cgroup)
        #expect(reading.availableBytes == 100 * Self.mib && reading.pressurePercent == 15)
        #expect(MemoryReading.combined(machine, cgroup: nil) == machine)
        // A host short of memory stays the bound even under a generous limit.
        let tightHost = MemoryBudgetController.Reading(availableBytes: 50 * Self.mib)
        #expect(MemoryReading.combined(tightHost, cgroup: cgroup).availableBytes == 50 * Self.mib)
    }
}
