/// Per-connection limits the state machine enforces.
public struct ConnectionLimits: Sendable, Equatable {
    /// Maximum bytes of request line plus headers (431 beyond).
    public var maxHeaderBytes: Int = 16 * 1024
    /// Maximum body bytes (413 beyond).
    public var maxBodyBytes: Int = 8 * 1024 * 1024
    /// Seconds from the first byte of a request to the end of its headers (408 beyond).
    public var headerTimeout: Double = 10
    /// Seconds an idle keep-alive connection stays open.
    public var idleTimeout: Double = 60
    /// Seconds from the first byte of a request to the end of its body (408 beyond).
    public var requestTimeout: Double = 60
    /// Pipelined requests accepted ahead of their responses; more pauses reading (backpressure).
    public var maxPipelined: Int = 16

    /// Defaults; adjust fields as needed.
    public init() {}
}
