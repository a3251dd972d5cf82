/// Fate-style "shallow-favoring" caching (Fang et al., Fate, 2025): the experts of shallow
/// layers are the hardest to prefetch (a cross-layer predictor has little or no earlier layer
/// to look from), so they get priority to stay resident. Victims are taken from deep layers
/// (`layer ≥ shallowLayerCount`) first, chosen among them by `inner` (LRU by default); a
/// shallow expert is evicted only when no deep expert is evictable. Per-layer floors — which
/// stop the deep layers from being starved completely — are enforced by `CacheBookkeeping`,
/// which never offers a layer's expert as a candidate once the layer is down to its floor.
///
/// The policy only matters when one pool serves several layers; in a per-layer cache it is
/// its inner policy.
public struct LayerAwarePolicy: CachePolicy {
    public let name: String
    /// Layers `0..<shallowLayerCount` are favoured.
    public let shallowLayerCount: Int
    private var inner: any CachePolicy

    /// Favours layers below `shallowLayerCount`; orders within a tier by `inner`.
    public init(shallowLayerCount: Int, inner: any CachePolicy = LRUPolicy(), name: String = "fate") {
        self.shallowLayerCount = shallowLayerCount
        self.inner = inner
        self.name = name
    }

    public mutating func didInsert(_ key: ExpertKey) { inner.didInsert(key) }
    public mutating func didAccess(_ key: ExpertKey) { inner.didAccess(key) }
    public mutating func didEvict(_ key: ExpertKey) { inner.didEvict(key) }

    public func victim(among candidates: [ExpertKey]) -> ExpertKey {
        let deep = candidates.filter { $0.layer >= shallowLayerCount }
        return inner.victim(among: deep.isEmpty ? candidates : deep)
    }
}
