/// How `serve` runs the model, as configuration keys (flags, `MOE_*` and TOML alike). The HTTP
/// layer only carries them: the runtime validates the names and applies them. Nil keeps the
/// runtime's default.
public struct RuntimeSettings: Sendable, Equatable {
    /// `expert_cache`: bytes of experts to keep in RAM, overriding the share `memory_budget` leaves them.
    public var expertCacheBytes: Int?
    /// `cache_policy`: eviction policy of the expert cache (learned, lfu, lru, …).
    public var cachePolicy: String?
    /// `prefetch`: predictive prefetch of experts: "on", "off" or "auto".
    public var prefetch: String?
    /// `predictor`: named predictor configuration.
    public var predictor: String?
    /// `predictor_probes`: fitted probes file, or `none`.
    public var predictorProbes: String?
    /// `kv_cache_type`: f16 or f32.
    public var kvCacheType: String?
    /// `reader_threads`: concurrent expert reads.
    public var readerThreads: Int?
    /// `io_engine`: engine of expert reads (auto, io_uring or threads).
    public var ioEngine: String?
    /// `prefetch_reads`: prefetch reads that may run at once (0: no separate bound).
    public var prefetchReads: Int?
    /// `prefetch_min_probability`: floor on a predicted expert's probability.
    public var prefetchMinProbability: Double?
    /// `prefetch_budget`: prefetched, unused experts each layer may hold (0: no bound).
    public var prefetchBudget: Int?
    /// `shadow_routing`: run a shadow of the next MoE layer while misses load (`RuntimeSpecification.shadowRouting`).
    public var shadowRouting: Bool?
    /// `expert_surrogates`: linear stand-ins for the experts' outputs used by the shadow, a file or `none`
    /// (default: the model directory's own `expert-surrogates.safetensors`).
    public var expertSurrogates: String?
    /// `surrogate_shadow`: how the shadow uses them (off, fill, early, both, confident; `SurrogateShadow`).
    public var surrogateShadow: String?
    /// `max_sequences`: sequences decoded together in one batch.
    public var maxSequences: Int = 8
    /// `context_size`: positions a sequence may reach (prompt and reply), at most the model's trained
    /// context (its default); the memory plan reserves KV for this many per sequence.
    public var contextSize: Int?
    /// `prompt_cache_partial`: when a retained cache holding part of a prompt is reused (exact, always, off).
    public var promptCachePartial: String?

    /// The defaults.
    public init() {}
}
