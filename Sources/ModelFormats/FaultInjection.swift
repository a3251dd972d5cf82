import Foundation

/// Faults to inject into the expert read path and the packer's writes, for failure testing.
/// Off unless configured: `MOE_FAULTS` in the environment (read once, by `FaultInjector.shared`),
/// or an injector handed to an `ExpertStore` / `ExpertStorePacker` by a test.
///
/// The specification is a comma-separated list of `key=value` (`key:value` is accepted too):
/// - `read_error=P` — an expert read fails with EIO with probability `P` (0...1); `once`: the
///   next expert read only.
/// - `short_read=P` — an expert read returns half the bytes asked for (as at a truncated file);
///   `once` likewise.
/// - `latency_ms=N` — every expert read first waits `N` milliseconds (a slow disk).
/// - `corrupt_blob=L/E` — every read of expert `E` of layer `L` has one byte flipped after it
///   arrives from disk, before its checksum is checked (bit rot while serving); `P` or `once`:
///   any expert read, with probability `P` or the next one only.
/// - `enospc_after=BYTES` — the packer's writes fail with ENOSPC once `BYTES` bytes have been
///   written in total (the disk filling while packing).
/// - `seed=N` — seed of the random draws for the probabilities (default 1).
///
/// Example: `MOE_FAULTS=read_error=0.01,short_read=0.01,latency_ms=5,corrupt_blob=3/17`.
/// `MOE_FAULTS=@FILE` reads the specification from `FILE` instead, again whenever the file
/// changes, so that faults can be turned on and off in a running server (empty or missing: none).
public struct FaultPlan: Sendable, Equatable {
    /// How often a fault fires.
    public enum Rate: Sendable, Equatable {
        /// With this probability on every read.
        case probability(Double)
        /// On the next read only.
        case once
    }

    /// Expert reads failing with EIO.
    public var readError: Rate?
    /// Expert reads returning half the bytes.
    public var shortRead: Rate?
    /// Milliseconds added before every expert read.
    public var latencyMilliseconds = 0
    /// Expert whose every read is corrupted (layer, expert).
    public var corruptBlob: (layer: Int, expert: Int)?
    /// Corrupt any expert read, with this rate.
    public var corruptRate: Rate?
    /// Bytes the packer may write before ENOSPC.
    public var enospcAfterBytes: Int?
    /// Seed of the random draws.
    public var seed: UInt64 = 1

    /// No faults.
    public init() {}

    /// Whether any fault is configured.
    public var isEmpty: Bool { self == FaultPlan() }

    public static func == (a: FaultPlan, b: FaultPlan) -> Bool {
        a.readError == b.readError && a.shortRead == b.shortRead && a.latencyMilliseconds == b.latencyMilliseconds
            && a.corruptBlob?.layer == b.corruptBlob?.layer && a.corruptBlob?.expert == b.corruptBlob?.expert
            && a.corruptRate == b.corruptRate && a.enospcAfterBytes == b.enospcAfterBytes && a.seed == b.seed
    }

    /// Parses a `MOE_FAULTS` specification; the error names the item that is wrong.
    public init(specification: String) throws {
        func fail(_ item: Substring, _ why: String) -> ModelFormatError {
            ModelFormatError("MOE_FAULTS: '\(item)': \(why)")
        }
        func rate(_ item: Substring, _ value: String) throws -> Rate {
            if value == "once" { return .once }
            guard let p = Double(value), (0...1).contains(p) else { throw fail(item, "expected a probability in 0...1 or 'once'") }
            return .probability(p)
        }
        for item in specification.split(separator: ",") {
            let trimmed = item.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty else { continue }
            guard let sep = trimmed.firstIndex(where: { $0 == "=" || $0 == ":" }) else { throw fail(item, "expected key=value") }
            let key = String(trimmed[..<sep])
            let value = String(trimmed[trimmed.index(after: sep)...])
            switch key {
            case "read_error": readError = try rate(item, value)
            case "short_read": shortRead = try rate(item, value)
            case "latency_ms":
                guard let ms = Int(value), ms >= 0 else { throw fail(item, "expected milliseconds >= 0") }
                latencyMilliseconds = ms
            case "corrupt_blob":
                if value == "once" || Double(value) != nil { corruptRate = try rate(item, value); continue }
                let parts = value.split(separator: "/")
                guard parts.count == 2, let l = Int(parts[0]), let e = Int(parts[1]), l >= 0, e >= 0 else {
                    throw fail(item, "expected LAYER/EXPERT, a probability or 'once'")
                }
                corruptBlob = (l, e)
            case "enospc_after":
                guard let bytes = Int(value), bytes >= 0 else { throw fail(item, "expected a byte count >= 0") }
                enospcAfterBytes = bytes
            case "seed":
                guard let s = UInt64(value) else { throw fail(item, "expected an unsigned integer") }
                seed = s
            default:
                throw fail(item, "unknown fault (known: read_error, short_read, latency_ms, corrupt_blob, enospc_after, seed)")
            }
        }
    }
}

/// Decides, per expert read or packer write, whether a fault fires. Thread-safe; with an empty
/// plan every query is one lock round trip and answers "no fault".
public final class FaultInjector: @unchecked Sendable {
    /// What happens to one expert read.
    public struct ReadFaults: Sendable, Equatable {
        /// Fail it with EIO.
        public var error = false
        /// Deliver half of it.
        public var short = false
        /// Flip a byte of it.
        public var corrupt = false
        /// Wait first, in milliseconds.
        public var latencyMilliseconds = 0

        /// No fault.
        public init() {}
    }

    private let lock = NSLock()
    private var plan: FaultPlan
    private var random: UInt64
    private var written = 0
    /// `MOE_FAULTS=@FILE`: the file, and the modification time and size of its last reading.
    private let sourceFile: String?
    private var sourceStamp: (Int, Int, Int) = (-1, -1, -1)

    /// The process's injector, configured from `MOE_FAULTS` (empty when unset). An invalid
    /// specification ends the process with a one-line error: a failure test must not silently
    /// run without its faults.
    public static let shared: FaultInjector = {
        guard let spec = ProcessInfo.processInfo.environment["MOE_FAULTS"], !spec.isEmpty else { return FaultInjector() }
        if spec.hasPrefix("@") {
            FileHandle.standardError.write(Data("moe-serve: fault injection from \(spec.dropFirst()) (MOE_FAULTS=\(spec))\n".utf8))
            return FaultInjector(file: String(spec.dropFirst()))
        }
        do {
            let plan = try FaultPlan(specification: spec)
            FileHandle.standardError.write(Data("moe-serve: fault injection on (MOE_FAULTS=\(spec))\n".utf8))
            return FaultInjector(plan)
        } catch {
            FileHandle.standardError.write(Data("moe-serve: error: \(error)\n".utf8))
            exit(2)
        }
    }()

    /// An injector for `plan`.
    public init(_ plan: FaultPlan = FaultPlan()) {
        self.plan = plan
        random = plan.seed
        sourceFile = nil
    }

    /// An injector whose plan is the content of `file`, re-read whenever the file changes.
    public init(file: String) {
        plan = FaultPlan()
        random = plan.seed
        sourceFile = file
    }

    /// Re-reads the source file when its modification time or size changed. Lock held.
    private func reloadIfChanged() {
        guard let sourceFile else { return }
        var status = stat()
        let stamp = stat(sourceFile, &status) == 0
            ? (Int(status.st_mtim.tv_sec), Int(status.st_mtim.tv_nsec), Int(status.st_size)) : (0, 0, 0)
        guard stamp != sourceStamp else { return }
        sourceStamp = stamp
        let text = (try? String(contentsOfFile: sourceFile, encoding: .utf8)) ?? ""
        do {
            plan = try FaultPlan(specification: text.trimmingCharacters(in: .whitespacesAndNewlines))
        } catch {
            // A bad edit keeps no faults rather than stopping a running server.
            plan = FaultPlan()
            FileHandle.standardError.write(Data("moe-serve: \(error); no faults injected\n".utf8))
        }
        random = plan.seed
        written = 0
    }

    /// Replaces the plan (and restarts the byte count of `enospc_after`).
    public func configure(_ plan: FaultPlan) {
        lock.lock(); defer { lock.unlock() }
        self.plan = plan
        random = plan.seed
        written = 0
    }

    /// The faults for one read of expert `expert` of `layer`; one-shot faults are used up.
    public func readFaults(layer: Int, expert: Int) -> ReadFaults {
        lock.lock(); defer { lock.unlock() }
        reloadIfChanged()
        guard !plan.isEmpty else { return ReadFaults() }
        var faults = ReadFaults()
        faults.latencyMilliseconds = plan.latencyMilliseconds
        faults.error = fires(&plan.readError)
        faults.short = !faults.error && fires(&plan.shortRead)
        if fires(&plan.corruptRate) {
            faults.corrupt = true
        } else if let blob = plan.corruptBlob, blob.layer == layer, blob.expert == expert {
            faults.corrupt = true
        }
        return faults
    }

    /// How many of `count` bytes the packer may write before the injected ENOSPC (`count` when
    /// no fault is configured); the bytes allowed are counted as written.
    public func allowedWrite(_ count: Int) -> Int {
        lock.lock(); defer { lock.unlock() }
        reloadIfChanged()
        guard let limit = plan.enospcAfterBytes else { return count }
        let allowed = max(0, min(count, limit - written))
        written += allowed
        return allowed
    }

    private func fires(_ rate: inout FaultPlan.Rate?) -> Bool {
        switch rate {
        case nil: return false
        case .once:
            rate = nil
            return true
        case let .probability(p):
            // SplitMix64: reproducible from `seed`, no shared global generator.
            random &+= 0x9E37_79B9_7F4A_7C15
            var z = random
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            return Double(z >> 11) / Double(1 << 53) < p
        }
    }
}
