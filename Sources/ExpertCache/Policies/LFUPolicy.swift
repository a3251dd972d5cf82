/// Least frequently used with aging: every use adds one to an expert's count; every
/// `agingPeriod` uses of a layer halve all counts of that layer, so experts that were popular
/// long ago do not stay forever. Counts are kept for evicted experts too (history), because
/// an MoE layer has a small, fixed set of experts and their long-run popularity is the
/// signal. Ties go to the least recently used.
public struct LFUPolicy: CachePolicy {
    public let name: String
    /// Uses of one layer between two halvings of that layer's counts.
    public let agingPeriod: Int
    private var counts: [ExpertKey: Int] = [:]
    private var layerUses: [Int: Int] = [:]
    private var recency = LRUPolicy()
    private var fresh = FreshInsertions()

    /// An empty policy halving a layer's counts every `agingPeriod` uses of that layer.
    public init(agingPeriod: Int = 256, name: String = "lfu") {
        precondition(agingPeriod > 0)
        self.agingPeriod = agingPeriod
        self.name = name
    }

    /// The current (aged) count of `key`.
    public func count(_ key: ExpertKey) -> Int { counts[key] ?? 0 }

    public mutating func didInsert(_ key: ExpertKey) {
        fresh.inserted(key)
        recency.didInsert(key)
        reference(key)
    }

    public mutating func didAccess(_ key: ExpertKey) {
        recency.didAccess(key)
        if !fresh.consumeAccess(key) { reference(key) }
    }

    public mutating func didEvict(_ key: ExpertKey) {
        fresh.evicted(key)
        recency.didEvict(key)
    }

    private mutating func reference(_ key: ExpertKey) {
        counts[key, default: 0] += 1
        layerUses[key.layer, default: 0] += 1
        if layerUses[key.layer]! % agingPeriod == 0 {
            for (other, value) in counts where other.layer == key.layer { counts[other] = value / 2 }
        }
    }

    public func victim(among candidates: [ExpertKey]) -> ExpertKey {
        candidates.min {
            (count($0), recency.lastUseTick($0), $0) < (count($1), recency.lastUseTick($1), $1)
        }!
    }
}
