import ModelFormats

/// What the cache needs from wherever experts live (the packed expert store's O_DIRECT
/// reader, a checkpoint, a test fake). Called from the cache's reader threads, several at
/// once, so implementations must be thread-safe.
public protocol ExpertLoader: Sendable {
    /// Bytes expert `expert` of `layer` occupies once loaded (what the budget is charged).
    func expertByteCount(layer: Int, expert: Int) -> Int
    /// Reads expert `expert` of `layer` into memory the returned weights own. Blocking.
    func loadExpert(layer: Int, expert: Int) throws -> ExpertWeights
}
