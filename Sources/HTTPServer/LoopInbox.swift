import CLibUV
import Foundation
import InferenceEngine

/// A message from another thread (worker, engine, signal-free shutdown call) to the loop.
enum LoopMessage: Sendable {
    /// A route produced a complete response.
    case response(connection: UInt64, request: UInt64, HTTPResponse)
    /// The engine admitted a generation's choices under `engineIDs` (one per choice).
    case submitted(connection: UInt64, request: UInt64, job: CompletionJob, engineIDs: [UInt64])
    /// An engine event for choice `choice` of a request.
    case event(connection: UInt64, request: UInt64, choice: Int, GenerationEvent)
    /// Begin a graceful shutdown.
    case shutdown
}

/// The only way into the event loop from other threads: a locked queue plus `uv_async_send`,
/// which wakes the loop (several sends may coalesce into one wake-up, so the loop drains all).
final class LoopInbox: @unchecked Sendable {
    private let lock = NSLock()
    private var messages: [LoopMessage] = []
    private var async: UnsafeMutablePointer<uv_async_t>?

    /// Connects the inbox to the loop's async handle (on the loop thread, before any push).
    func attach(_ handle: UnsafeMutablePointer<uv_async_t>) {
        lock.lock(); async = handle; lock.unlock()
    }

    /// Stops waking the loop (its async handle is being closed).
    func detach() {
        lock.lock(); async = nil; lock.unlock()
    }

    /// Queues a message and wakes the loop. Never blocks beyond a short lock.
    func push(_ message: LoopMessage) {
        lock.lock()
        messages.append(message)
        let handle = async
        // Sending under the lock keeps the handle from being closed in between.
        if let handle { uv_async_send(handle) }
        lock.unlock()
    }

    /// Everything queued so far (on the loop thread).
    func drain() -> [LoopMessage] {
        lock.lock()
        defer { lock.unlock() }
        let out = messages
        messages = []
        return out
    }
}
