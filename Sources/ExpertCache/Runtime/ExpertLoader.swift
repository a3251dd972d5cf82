import ModelFormats

/// What the cache needs from wherever experts live (the packed expert store's O_DIRECT
/// reader, a checkpoint, a test fake). Called from the cache's reader threads, several at
/// once, so implementations must be thread-safe.
public protocol ExpertLoader: Sendable {
    /// Bytes expert `expert` of `layer` occupies once loaded (what the budget is charged).
    func expertByteCount(layer: Int, expert: Int) -> Int
    /// Reads expert `expert` of `layer` into memory the returned weights own. Blocking.
    func loadExpert(layer: Int, expert: Int) throws -> ExpertWeights
    /// As `loadExpert(layer:expert:)`; a loader that reads in parts may call `gateUpArrived`
    /// (once, on this thread, before returning) with the expert whose gate and up matrices are
    /// in memory and whose `rest` it finishes before returning the whole expert.
    func loadExpert(layer: Int, expert: Int, gateUpArrived: (ExpertWeights) -> Void) throws -> ExpertWeights
    /// As `loadExpert(layer:expert:)`, calling `transferred` on this thread once the expert's
    /// bytes are in memory and before they are checked and decoded (`PacedExpertLoader` waits
    /// there for its emulated transfer).
    func loadExpert(layer: Int, expert: Int, transferred: () -> Void) throws -> ExpertWeights
    /// Bytes of the low-bit copy of expert `expert` of `layer` once loaded; nil without copies.
    func lowBitByteCount(layer: Int, expert: Int) -> Int?
    /// Reads the low-bit copy of expert `expert` of `layer`. Blocking.
    func loadLowBitExpert(layer: Int, expert: Int) throws -> ExpertWeights
    /// The cache has reserved room for reads of `bytes` more (negative: fewer) that have not
    /// started; called before it evicts what makes the room, so a loader that recycles buffers
    /// may keep the evicted ones for those reads (`BufferPool`).
    func expectReads(bytes: Int)
    /// No reads are queued or running (every started read has taken its buffer): a loader keeps
    /// no buffers for reads to come.
    func noReadsExpected()
    /// Prepares up to `limit` buffers for later reads ahead of need, one at a time while
    /// `shouldWarm(warmBytes)` allows one more (`warmBytes`: the bytes warmed and not yet taken
    /// by a read); returns how many. A loader that maps its buffers faults them in now
    /// (`ExpertStore.warmBuffers`).
    func warmBuffers(limit: Int, shouldWarm: (_ warmBytes: Int) -> Bool) -> Int
    /// Gives up the warmed buffers no read has taken (the budget shrank).
    func dropWarmBuffers()
}

extension ExpertLoader {
    /// Reads the expert whole; `gateUpArrived` is never called.
    public func loadExpert(layer: Int, expert: Int, gateUpArrived: (ExpertWeights) -> Void) throws -> ExpertWeights {
        try loadExpert(layer: layer, expert: expert)
    }
    /// Reads the expert whole, then calls `transferred`: a loader that checks or decodes what it
    /// reads in one step cannot tell where the transfer ends.
    public func loadExpert(layer: Int, expert: Int, transferred: () -> Void) throws -> ExpertWeights {
        let weights = try loadExpert(layer: layer, expert: expert)
        transferred()
        return weights
    }
    /// Bytes expert `expert` of `layer`'s low-bit copy occupies once loaded; nil when there are
    /// no low-bit copies (the default).
    public func lowBitByteCount(layer: Int, expert: Int) -> Int? { nil }
    /// Reads the low-bit copy of expert `expert` of `layer`. Blocking; the default throws.
    public func loadLowBitExpert(layer: Int, expert: Int) throws -> ExpertWeights {
        throw ExpertCacheError("this model has no low-bit copies of its experts")
    }
    /// Does nothing: the loader does not recycle buffers.
    public func expectReads(bytes: Int) {}
    /// Does nothing.
    public func noReadsExpected() {}
    /// Warms nothing: the loader has no buffers of its own to prepare.
    public func warmBuffers(limit: Int, shouldWarm: (_ warmBytes: Int) -> Bool) -> Int { 0 }
    /// Does nothing.
    public func dropWarmBuffers() {}
}
