import CLibUV
import Foundation
import InferenceEngine

/// Loop-side bookkeeping of one request on a connection.
final class RequestState {
    let route: String
    let method: String
    let path: String
    let started: Double
    let cors: [(String, String)]
    var responder: GenerationResponder?
    /// One engine id per choice (`n`).
    var engineIDs: [UInt64] = []
    /// Events that arrived before the admission message, with their choice index.
    var pendingEvents: [(Int, GenerationEvent)] = []
    var status = 0
    var cancelled = false

    init(route: String, method: String, path: String, started: Double, cors: [(String, String)]) {
        self.route = route
        self.method = method
        self.path = path
        self.started = started
        self.cors = cors
    }
}


/// One accepted TCP connection: its libuv handle, its state machine and its requests.
/// Confined to the loop thread.
final class ServerConnection {
    let id: UInt64
    let tcp: UnsafeMutablePointer<uv_tcp_t>
    var machine: ConnectionStateMachine
    var requests: [UInt64: RequestState] = [:]
    var closing = false
    /// Close without flushing (peer gone, not reading, or the grace period is over).
    var aborting = false
    var reading = true
    /// Request bytes of this connection's parser counted in the server's held-bytes total.
    var heldBytes = 0
    /// The client sent EOF (it may still read).
    var peerEOF = false
    /// `uv_shutdown` finished: our side of the connection is flushed and half-closed.
    var shutdownDone = false
    /// `uv_close` was called (exactly once).
    var handleClosing = false
    /// After our half-close, the client's remaining bytes are read and dropped until this time,
    /// so that closing with unread data does not send a reset that destroys the response.
    var lingerDeadline: Double?

    init(id: UInt64, tcp: UnsafeMutablePointer<uv_tcp_t>, limits: ConnectionLimits, now: Double) {
        self.id = id
        self.tcp = tcp
        self.machine = ConnectionStateMachine(limits: limits, now: now)
    }

    var stream: UnsafeMutablePointer<uv_stream_t> { UnsafeMutableRawPointer(tcp).assumingMemoryBound(to: uv_stream_t.self) }
    var handle: UnsafeMutablePointer<uv_handle_t> { UnsafeMutableRawPointer(tcp).assumingMemoryBound(to: uv_handle_t.self) }
}
