/// An eviction policy as a pure state machine: it hears about insertions, uses and evictions
/// and, asked to, picks a victim among candidates the bookkeeping has already filtered (only
/// resident, unpinned experts that floors allow). It never sees bytes, locks or I/O, so each
/// policy can be tested with hand-computed sequences.
///
/// An insertion counts as one reference: a demand miss calls `didInsert` then `didAccess`,
/// and policies must not count that first access twice; a prefetch calls only `didInsert`.
public protocol CachePolicy: Sendable {
    /// Short name used in reports (`lru`, `lfu`, ...).
    var name: String { get }
    /// `key` became resident.
    mutating func didInsert(_ key: ExpertKey)
    /// `key`, resident, was used by a demand request.
    mutating func didAccess(_ key: ExpertKey)
    /// `key` left the cache.
    mutating func didEvict(_ key: ExpertKey)
    /// The expert to evict first among `candidates` (non-empty, all resident and evictable).
    func victim(among candidates: [ExpertKey]) -> ExpertKey
    /// Offline replay only: `key`, about to be used, will next be used at `time` (`Int.max`:
    /// never). Only Belady's policy listens.
    mutating func observeNextUse(_ key: ExpertKey, at time: Int)
    /// One token of sequence `sequence` (a request) was routed to `routed` in `layer` (distinct
    /// experts, as a router picks them). Only policies that model the running sequences listen.
    mutating func sequence(_ sequence: Int, routedTo routed: [Int], layer: Int)
    /// Sequence `sequence` finished (or was cancelled): its tokens say nothing of what runs next.
    mutating func sequenceEnded(_ sequence: Int)
    /// For a policy that switches between others (`DuelingPolicy`), the name of the one choosing
    /// victims now; nil for the others. Reported in the cache's statistics and metrics.
    var leader: String? { get }
}

extension CachePolicy {
    public mutating func observeNextUse(_ key: ExpertKey, at time: Int) {}
    public mutating func sequence(_ sequence: Int, routedTo routed: [Int], layer: Int) {}
    public mutating func sequenceEnded(_ sequence: Int) {}
    public var leader: String? { nil }
}

/// Tracks, per key, whether the last event was an insertion not yet followed by an access,
/// so that the access right after a demand insertion is not counted as a second reference.
struct FreshInsertions: Sendable {
    private var fresh: Set<ExpertKey> = []

    mutating func inserted(_ key: ExpertKey) { fresh.insert(key) }

    /// True when this access is the one that follows the insertion (and should not count).
    mutating func consumeAccess(_ key: ExpertKey) -> Bool { fresh.remove(key) != nil }

    mutating func evicted(_ key: ExpertKey) { fresh.remove(key) }
}
