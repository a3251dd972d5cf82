/// Least recently used: evicts the expert whose last insertion or use is oldest.
public struct LRUPolicy: CachePolicy {
    public let name: String
    /// One tick per event across all layers, so recency is comparable between layers when
    /// one pool serves them all.
    private var clock: UInt64 = 0
    private var lastUse: [ExpertKey: UInt64] = [:]

    /// An empty LRU policy; `name` labels it in reports.
    public init(name: String = "lru") { self.name = name }

    public mutating func didInsert(_ key: ExpertKey) { touch(key) }
    public mutating func didAccess(_ key: ExpertKey) { touch(key) }
    public mutating func didEvict(_ key: ExpertKey) { lastUse[key] = nil }

    private mutating func touch(_ key: ExpertKey) {
        clock += 1
        lastUse[key] = clock
    }

    /// The tick of `key`'s last insertion or use (0 if unknown).
    public func lastUseTick(_ key: ExpertKey) -> UInt64 { lastUse[key] ?? 0 }

    public func victim(among candidates: [ExpertKey]) -> ExpertKey {
        candidates.min { (lastUseTick($0), $0) < (lastUseTick($1), $1) }!
    }
}
