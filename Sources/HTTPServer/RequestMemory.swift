/// The memory the HTTP layer may hold, derived from the memory budget and the limits, so that
/// the memory plan can reserve it (`reservationBytes`, added to the process's own share before
/// the expert cache gets the rest) and the server can keep to it.
///
/// Where request memory goes, and what bounds it:
/// - each open connection: its libuv handle, state machine and parser (`perConnectionBytes`);
/// - request heads and bodies being received or waiting for a worker: at most `heldBytesCap`
///   in total across connections (a request that would exceed it is answered 503);
/// - decoding a body (JSON tree) and tokenizing its prompt: transient memory up to
///   `decodeAmplification` times the body; bodies above `smallBodyBytes` are decoded one at a
///   time, smaller ones on `smallBodyLanes` workers;
/// - responses waiting to be sent: at most `unsentBytesCap` in total (a client that lets more
///   pile up is dropped) and the per-request state of `max_queued_requests` generations.
public struct RequestMemory: Sendable, Equatable {
    /// Largest request body before the model's context is known (413 beyond).
    public var bodyLimit: Int
    /// Request bytes (heads and bodies) held at once across all connections.
    public var heldBytesCap: Int
    /// Connections whose memory is reserved (`max_connections`).
    public var maxConnections: Int
    /// Generation requests whose state is reserved (`max_queued_requests`).
    public var maxQueuedRequests: Int

    /// Bodies up to this size are decoded on `smallBodyLanes` workers; larger ones one at a time.
    public static let smallBodyBytes = 16 << 10
    /// Workers decoding small bodies (health checks and metrics are answered on the loop thread).
    public static let smallBodyLanes = 2
    /// Peak transient bytes of decoding a body and tokenizing its prompt, per body byte. Measured
    /// worst cases: a JSON array of one-digit token ids (2 bytes each) becomes 16-byte JSON values
    /// plus 8-byte ids (~12x), a prompt string is tokenized with ~30x its size in intermediate
    /// pieces and ids, but only up to the context's worth of bytes.
    public static let decodeAmplification = 24
    /// One open connection: libuv handle, state machine, parser, read bookkeeping. Measured: 2,000
    /// idle connections added 1.6 MB to the server's RSS (~0.8 KiB each); a request head in
    /// progress is counted in `heldBytesCap`, so 4 KiB leaves a wide margin.
    public static let perConnectionBytes = 4 << 10
    /// One admitted generation's HTTP-side state: responder, pending events, response buffers.
    public static let perRequestBytes = 32 << 10
    /// The event loop, its 64 KiB read buffer, worker threads' stacks in use, metrics.
    public static let baseBytes = 3 << 20
    /// Unsent response bytes across all connections beyond which a slow reader is dropped.
    public static let unsentBytesCap = 2 << 20
    /// A connection holding fewer unsent bytes than this is never dropped for the global cap
    /// (a streaming client that keeps up has almost nothing queued).
    public static let unsentBytesPerConnectionFloor = 16 << 10
    /// The budget divided by this bounds the body limit: a large body is decoded with
    /// `decodeAmplification` times its size, which must stay a small part of the budget.
    public static let budgetShareDivisor = 512

    /// The limits for `config`: the body limit is `max_body_size`, lowered to 1/512 of the
    /// memory budget (never below 64 KiB); the held-bytes cap is `max_request_memory` or, when
    /// that is 0, four bodies' worth (at least 1 MiB).
    public init(config: ServerConfig) {
        bodyLimit = min(config.limits.maxBodyBytes, max(64 << 10, config.memoryBudget / Self.budgetShareDivisor))
        heldBytesCap = config.maxRequestMemory > 0 ? config.maxRequestMemory : max(1 << 20, 4 * bodyLimit)
        maxConnections = config.maxConnections
        maxQueuedRequests = config.maxQueuedRequests
    }

    /// Bytes a body needs at most to carry a prompt of `contextLength` tokens of at most
    /// `maxBytesPerToken` bytes each: every byte may be JSON-escaped to six (`\u00XX`), token id
    /// arrays take up to 8 bytes an id, plus 16 KiB for the other fields.
    public static func contextBodyLimit(contextLength: Int, maxBytesPerToken: Int) -> Int {
        let perToken = max(6 * maxBytesPerToken, 8)
        let (product, overflow) = contextLength.multipliedReportingOverflow(by: perToken)
        return overflow ? Int.max : product + (16 << 10)
    }

    /// The body limit once the model is known: also bounded by what its context can use.
    public func bodyLimit(contextLength: Int, maxBytesPerToken: Int) -> Int {
        min(bodyLimit, Self.contextBodyLimit(contextLength: contextLength, maxBytesPerToken: maxBytesPerToken))
    }

    /// Bytes the memory plan reserves for the HTTP layer under these limits.
    public var reservationBytes: Int {
        Self.baseBytes
            + maxConnections * Self.perConnectionBytes
            + heldBytesCap
            + bodyLimit * Self.decodeAmplification
            + Self.smallBodyLanes * Self.smallBodyBytes * Self.decodeAmplification
            + maxQueuedRequests * Self.perRequestBytes
            + Self.unsentBytesCap
    }
}

extension APIServer {
    /// Bytes the memory plan must reserve for a server started with `config` (connections,
    /// request bodies being received and decoded, responses being sent). Call it before dividing
    /// the budget; the server keeps to it by enforcing the same limits.
    public static func memoryReservation(for config: ServerConfig) -> Int {
        RequestMemory(config: config).reservationBytes
    }
}
