import Foundation

/// The eviction policies selectable by name (configuration, `--cache-policy`).
public enum PolicyChoice: String, CaseIterable, Codable, Sendable {
    /// `LRUPolicy`.
    case lru
    /// `LFUPolicy` (with aging).
    case lfu
    /// `LRFUPolicy`, the frequency + recency hybrid.
    case lrfu
    /// `LayerAwarePolicy`, Fate's shallow-favoring policy.
    case fate
    /// `HotSetPolicy`, a hot set learned from usage over LRU.
    case hotset
    /// `LearnedPolicy`, the expected time to an expert's next use learned online from its age and rates.
    case learned
    /// `SequenceAwarePolicy`, the running sequences' own routing shrunk towards long-run popularity.
    case sequence

    /// A fresh policy of this kind. `layerCount` sizes Fate's shallow tier (the first
    /// quarter of the layers unless `shallowLayerCount` is given); `hotPerLayer` sizes the
    /// hot set.
    public func make(layerCount: Int, hotPerLayer: Int, shallowLayerCount: Int? = nil) -> any CachePolicy {
        switch self {
        case .lru: return LRUPolicy()
        case .lfu: return LFUPolicy()
        case .lrfu: return LRFUPolicy()
        case .fate: return LayerAwarePolicy(shallowLayerCount: shallowLayerCount ?? max(1, layerCount / 4))
        case .hotset: return HotSetPolicy(hotPerLayer: hotPerLayer)
        case .learned: return LearnedPolicy()
        case .sequence:
            // `MOE_LEARNED_RECENCY=on` measures the recency bonus on the stream (opt-in; an A/B switch).
            var parameters = SequenceAwarePolicy.Parameters()
            parameters.learnsRecency = ProcessInfo.processInfo.environment["MOE_LEARNED_RECENCY"] == "on"
            return SequenceAwarePolicy(parameters: parameters)
        }
    }
}
