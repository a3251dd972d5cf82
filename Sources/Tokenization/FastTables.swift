import Foundation

/// An open-addressing hash table from a packed token pair to a packed merge, for the BPE inner loop
/// (Swift's `Dictionary` hashes with SipHash, which dominates merging time).
final class PairTable: @unchecked Sendable {
    private let keys: UnsafeMutablePointer<UInt64>
    private let values: UnsafeMutablePointer<UInt64>
    private let mask: Int
    private static let empty = UInt64.max

    init(_ entries: [UInt64: UInt64]) {
        var capacity = 16
        while capacity < entries.count * 2 { capacity <<= 1 }
        mask = capacity - 1
        keys = .allocate(capacity: capacity)
        keys.initialize(repeating: Self.empty, count: capacity)
        values = .allocate(capacity: capacity)
        values.initialize(repeating: 0, count: capacity)
        for (k, v) in entries {
            var i = Self.slot(k, mask)
            while keys[i] != Self.empty { i = (i + 1) & mask }
            keys[i] = k
            values[i] = v
        }
    }

    @inline(__always)
    private static func slot(_ k: UInt64, _ mask: Int) -> Int {
        Int(truncatingIfNeeded: (k &* 0x9E37_79B9_7F4A_7C15) >> 29) & mask
    }

    @inline(__always)
    func get(_ k: UInt64) -> UInt64? {
        var i = Self.slot(k, mask)
        while true {
            let stored = keys[i]
            if stored == k { return values[i] }
            if stored == Self.empty { return nil }
            i = (i + 1) & mask
        }
    }
    deinit {
        keys.deallocate()
        values.deallocate()
    }
}

/// A thread-safe, direct-mapped cache of word → token ids in flat, preallocated memory (no
/// per-entry allocation, reference counting or exclusivity checks on the hot path). Each slot keeps the
/// word's scalars, so a hash collision is a miss, never a wrong answer.
final class WordCache: @unchecked Sendable {
    static let width = 24
    private static let slots = 1 << 15
    private let lock = NSLock()
    private let hashes: UnsafeMutablePointer<UInt64>
    private let lengths: UnsafeMutablePointer<UInt8>  // 0 = empty
    private let idCounts: UnsafeMutablePointer<UInt8>
    private let scalars: UnsafeMutablePointer<UInt32>
    private let ids: UnsafeMutablePointer<Int32>

    init() {
        hashes = .allocate(capacity: Self.slots)
        hashes.initialize(repeating: 0, count: Self.slots)
        lengths = .allocate(capacity: Self.slots)
        lengths.initialize(repeating: 0, count: Self.slots)
        idCounts = .allocate(capacity: Self.slots)
        idCounts.initialize(repeating: 0, count: Self.slots)
        scalars = .allocate(capacity: Self.slots * Self.width)
        scalars.initialize(repeating: 0, count: Self.slots * Self.width)
        ids = .allocate(capacity: Self.slots * Self.width)
        ids.initialize(repeating: 0, count: Self.slots * Self.width)
    }

    deinit {
        hashes.deallocate()
        lengths.deallocate()
        idCounts.deallocate()
        scalars.deallocate()
        ids.deallocate()
    }

    @inline(__always)
    static func hash(_ word: ArraySlice<Unicode.Scalar>) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for s in word { h = (h ^ UInt64(s.value)) &* 0x0000_0100_0000_01B3 }
        return h ^ (h >> 29)
    }

    /// Appends the cached ids of `word` (whose hash is `h`) to `out`; false on a miss.
    @inline(__always)
    func lookup(_ word: ArraySlice<Unicode.Scalar>, hash h: UInt64, into out: inout [Int]) -> Bool {
        let slot = Int(truncatingIfNeeded: h) & (Self.slots - 1)
        lock.lock()
        defer { lock.unlock() }
        guard hashes[slot] == h, Int(lengths[slot]) == word.count else { return false }
        var p = scalars + slot * Self.width
        for s in word {
            if p.pointee != s.value { return false }
            p += 1
        }
        let q = ids + slot * Self.width
        for k in 0..<Int(idCounts[slot]) { out.append(Int(q[k])) }
        return true
    }

    func store(_ word: ArraySlice<Unicode.Scalar>, hash h: UInt64, ids wordIds: [Int32]) {
        guard word.count <= Self.width, wordIds.count <= Self.width, !word.isEmpty else { return }
        let slot = Int(truncatingIfNeeded: h) & (Self.slots - 1)
        lock.lock()
        defer { lock.unlock() }
        hashes[slot] = h
        lengths[slot] = UInt8(word.count)
        idCounts[slot] = UInt8(wordIds.count)
        var p = scalars + slot * Self.width
        for s in word { p.pointee = s.value; p += 1 }
        let q = ids + slot * Self.width
        for (k, id) in wordIds.enumerated() { q[k] = id }
    }
}
