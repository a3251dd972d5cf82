/// A hot set pinned from observed usage: every `refreshPeriod` uses of a layer, the
/// `hotPerLayer` experts of that layer used most so far become its hot set, and hot experts
/// are never offered as victims while a cold one is evictable; the cold part is LRU. A fixed
/// hot set (for example from a recorded trace's profile) can be given instead, and then it
/// never changes.
public struct HotSetPolicy: CachePolicy {
    public let name: String
    /// How many experts of each layer the observed hot set holds.
    public let hotPerLayer: Int
    /// Uses of a layer between recomputations of its hot set.
    public let refreshPeriod: Int
    private var counts: [ExpertKey: Int] = [:]
    private var layerUses: [Int: Int] = [:]
    private(set) var hot: Set<ExpertKey>
    private let fixed: Bool
    private var recency = LRUPolicy()
    private var fresh = FreshInsertions()

    /// Learns each layer's `hotPerLayer` most used experts, refreshing every `refreshPeriod`
    /// uses of the layer.
    public init(hotPerLayer: Int, refreshPeriod: Int = 64, name: String = "hotset") {
        precondition(hotPerLayer >= 0 && refreshPeriod > 0)
        self.hotPerLayer = hotPerLayer
        self.refreshPeriod = refreshPeriod
        self.name = name
        hot = []
        fixed = false
    }

    /// Keeps exactly `hotSet` hot, forever.
    public init(fixedHotSet hotSet: Set<ExpertKey>, name: String = "hotset") {
        hotPerLayer = 0
        refreshPeriod = 1
        self.name = name
        hot = hotSet
        fixed = true
    }

    /// Whether `key` is currently in the hot set.
    public func isHot(_ key: ExpertKey) -> Bool { hot.contains(key) }

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
        guard !fixed else { return }
        counts[key, default: 0] += 1
        layerUses[key.layer, default: 0] += 1
        guard layerUses[key.layer]! % refreshPeriod == 0 else { return }
        // Most used first; ties to the lower expert index, for determinism.
        let ranked = counts.filter { $0.key.layer == key.layer }
            .sorted { ($1.value, $0.key) < ($0.value, $1.key) }
            .prefix(hotPerLayer).map(\.key)
        hot = hot.filter { $0.layer != key.layer }.union(ranked)
    }

    public func victim(among candidates: [ExpertKey]) -> ExpertKey {
        let cold = candidates.filter { !hot.contains($0) }
        return recency.victim(among: cold.isEmpty ? candidates : cold)
    }
}
