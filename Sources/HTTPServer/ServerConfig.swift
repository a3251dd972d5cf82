/// Everything the server can be told. Loaded by `ConfigLoader` from TOML, environment
/// (`MOE_<KEY>`) and command-line flags; each property's TOML key is given in its comment.
public struct ServerConfig: Sendable, Equatable {
    /// `host`: address to bind. Loopback by default so nothing is exposed by accident.
    public var host: String = "127.0.0.1"
    /// `port`: TCP port; 0 picks a free one (tests).
    public var port: Int = 8080
    /// `model`: model directory or expert store; nil serves the bundled demo model.
    public var model: String?
    /// `memory_budget`: bytes the whole process may use (its own runtime, dense weights, scratch,
    /// KV cache and expert cache, which gets what remains); read by the runtime, not the HTTP layer.
    public var memoryBudget: Int = 4 << 30
    /// `memory_budget = "auto"`: the expert cache's share follows the machine's free memory and
    /// memory pressure; `memoryBudget` is then only where it starts (`serve` sets it from
    /// `MemAvailable`).
    public var memoryBudgetAuto = false
    /// The runtime keys (`cache_policy`, `prefetch`, `kv_cache_type`, …): see `RuntimeSettings`.
    public var runtime = RuntimeSettings()
    /// `api_keys`: accepted `Authorization: Bearer` keys; empty means no authentication.
    public var apiKeys: [String] = []
    /// `cors_allow_origins`: origins allowed by CORS (`*` for any); empty disables CORS headers.
    public var corsAllowOrigins: [String] = []
    /// `max_body_size`, `max_header_size`, `header_timeout`, `idle_timeout`, `request_timeout`,
    /// `max_pipelined`, `max_requests_per_connection`.
    public var limits = ConnectionLimits()
    /// `max_request_memory`: bytes of request heads and bodies held at once across connections
    /// (503 beyond); 0 derives it from the body limit (see `RequestMemory`).
    public var maxRequestMemory: Int = 0
    /// `max_queued_requests`: generation requests admitted but not finished; more get 503.
    public var maxQueuedRequests: Int = 64
    /// `max_connections`: open connections. At the cap a new connection sheds the oldest idle
    /// one; with none idle it is answered 503 with `Retry-After` and closed.
    public var maxConnections: Int = 512
    /// `retry_after`: seconds suggested in `Retry-After` when overloaded.
    public var retryAfterSeconds: Int = 1
    /// `shutdown_grace_period`: seconds running requests may take to finish after SIGTERM.
    public var shutdownGracePeriod: Double = 30
    /// `log_requests`: one line per request on stderr.
    public var logRequests: Bool = false
    /// `skip_missing_below`: opt-in lossy mode; a routed expert not in RAM whose router weight
    /// is below this is skipped (docs/LOSSY.md). nil (the default) is exact.
    public var skipMissingBelow: Float?
    /// `low_bit_misses`: opt-in lossy mode; an expert not in RAM runs from its low-bit copy
    /// (the store must have them) and is promoted to its full copy if it stays in use
    /// (docs/LOSSY.md). false (the default) is exact.
    public var lowBitMisses: Bool = false
    /// `low_bit_misses = "auto"`: choose at start, from the disk's measured bandwidth against
    /// the expert compute rate, between exact with prefetch and the slow-disk setting (docs/LOSSY.md).
    public var lowBitMissesAuto: Bool = false

    /// The defaults (the same values as ServerConfig/default.toml).
    public init() {}
}
