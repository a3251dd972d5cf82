import CKernels

/// The checksum of every blob and dense tensor in an expert store, named by the manifest's
/// `checksum_algorithm` (absent: `xxh64`, what stores before session 33 carry).
///
/// Stores are packed with CRC-32C since session 33. Every expert read is checked, and on a fast
/// drive XXH64's 5.4-5.7 GB/s on one core of this machine cost 1.20-1.24x in decode speed (6 GB/s
/// emulated, docs/BENCHMARKS.md "Session 33"); CRC-32C runs at 13.5 GB/s with SSE4.2's `crc32` in
/// three streams. It is the storage checksum of ext4, btrfs and iSCSI: made to catch the bit
/// flips and bursts a disk or a copy introduces, which is what this check is for.
public enum StoreChecksum: String, Sendable, CaseIterable {
    case xxh64
    case crc32c

    /// What `pack`, `synth` and `widen` write.
    public static let packDefault = StoreChecksum.crc32c

    /// The manifest's algorithm: nil is `xxh64`; an unknown name is an error naming it.
    public init(manifestName name: String?) throws {
        guard let name else { self = .xxh64; return }
        guard let known = StoreChecksum(rawValue: name) else {
            throw ModelFormatError("unknown checksum algorithm '\(name)' (this moe-serve knows \(StoreChecksum.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        self = known
    }

    /// The digest of `count` bytes at `bytes`, as the manifest stores it (lowercase hex: 16
    /// digits for XXH64, 8 for CRC-32C).
    public func digest(_ bytes: UnsafeRawPointer, count: Int) -> String {
        switch self {
        case .xxh64:
            return XXHash64.hex(XXHash64.hash(bytes, count: count))
        case .crc32c:
            let digits = String(moe_crc32c(0, bytes, count), radix: 16)
            return String(repeating: "0", count: 8 - digits.count) + digits
        }
    }

    /// The digest of `buffer`.
    public func digest(_ buffer: UnsafeRawBufferPointer) -> String {
        digest(buffer.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, count: buffer.count) // no byte is read when empty
    }
}
