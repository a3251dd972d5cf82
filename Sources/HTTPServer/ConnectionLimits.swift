/// Per-connection limits the state machine enforces.
public struct ConnectionLimits: Sendable, Equatable {
    /// Maximum bytes of request line plus headers (431 beyond).
    public var maxHeaderBytes: Int = 16 * 1024
    /// Maximum body bytes (413 beyond).
    public var maxBodyBytes: Int = 8 * 1024 * 1024
    /// Seconds from the first byte of a request to the end of its headers (408 beyond); also the
    /// longest silence tolerated in the middle of a request (a body that stops arriving), so no
    /// connection waits longer than this for bytes that may never come.
    public var headerTimeout: Double = 10
    /// Seconds an idle keep-alive connection stays open.
    public var idleTimeout: Double = 60
    /// Seconds from the first byte of a request to the end of its body (408 beyond).
    public var requestTimeout: Double = 60
    /// Pipelined requests accepted ahead of their responses; more pauses reading (backpressure).
    public var maxPipelined: Int = 16
    /// Requests served on one keep-alive connection; the last one is answered with
    /// `Connection: close`, so a client cannot hold a slot forever and load spreads after restarts.
    public var maxRequestsPerConnection: Int = 1000

    /// Defaults; adjust fields as needed.
    public init() {}
}
