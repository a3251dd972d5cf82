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
    /// `SequenceAwarePolicy`, the running sequences' own routing shrunk towards long-run popularity,
    /// with its fixed and its measured recency bonus dueling (`DuelingPolicy`).
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
            // The fixed and the measured recency bonus dueling, the cache evicting as the one
            // whose simulation hits more (`DuelingPolicy`). `MOE_LEARNED_RECENCY=off` keeps the
            // fixed bonus alone, `=on` the measured one alone (A/B switches).
            // Both rank by the expected wait for the next use; `MOE_LAYER_DISTANCE=off` by the
            // chance of use alone (A/B switch).
            let fixed = SequenceAwarePolicy.Parameters.fromEnvironment()
            var measured = fixed
            measured.learnsRecency = true
            switch ProcessInfo.processInfo.environment["MOE_LEARNED_RECENCY"] {
            case "off": return SequenceAwarePolicy(parameters: fixed)
            case "on": return SequenceAwarePolicy(parameters: measured)
            default: return DuelingPolicy(SequenceAwarePolicy(parameters: fixed, name: "fixed_recency"),
                                          SequenceAwarePolicy(parameters: measured, name: "measured_recency"), name: "sequence")
            }
        }
    }
}
