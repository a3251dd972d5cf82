import Foundation
import ModelFormats

/// Loads experts from a packed expert store: one `pread` per expert on an `O_DIRECT`
/// descriptor (so the bytes really come from disk), checksum-checked and decoded into a
/// buffer the returned weights own. A corrupt blob is an error naming its layer and expert.
public final class StoreExpertLoader: ExpertLoader, @unchecked Sendable {
    /// The store.
    public let store: ExpertStore

    /// Serves `store`'s experts.
    public init(store: ExpertStore) { self.store = store }

    public func expertByteCount(layer: Int, expert: Int) -> Int {
        store.expertBufferSize // what one decoded expert keeps resident (4 KiB-rounded)
    }

    public func loadExpert(layer: Int, expert: Int) throws -> ExpertWeights {
        let stored = try store.readExpert(layer: layer, expert: expert)
        return ExpertWeights(gate: stored.gate, up: stored.up, down: stored.down, biases: stored.biases)
    }

    public func loadExpert(layer: Int, expert: Int, transferred: () -> Void) throws -> ExpertWeights {
        let stored = try store.readExpert(layer: layer, expert: expert, transferred: transferred)
        return ExpertWeights(gate: stored.gate, up: stored.up, down: stored.down, biases: stored.biases)
    }

    /// A split read where the store allows one (`ExpertStore.readExpert(layer:expert:gateUpArrived:)`).
    public func loadExpert(layer: Int, expert: Int, gateUpArrived: (ExpertWeights) -> Void) throws -> ExpertWeights {
        let stored = try withoutActuallyEscaping(gateUpArrived) { early in
            try store.readExpert(layer: layer, expert: expert) { part in
                early(ExpertWeights(gate: part.gate, up: part.up, down: part.down, biases: part.biases, rest: part.rest))
            }
        }
        return ExpertWeights(gate: stored.gate, up: stored.up, down: stored.down, biases: stored.biases)
    }

    /// Evicted experts' buffers wait in the store's pool for the reads reserved in their place
    /// (`BufferPool`); `MOE_BUFFER_CREDIT=0` turns that off, for comparison.
    static let creditsPool = ProcessInfo.processInfo.environment["MOE_BUFFER_CREDIT"] != "0"

    public func expectReads(bytes: Int) { if Self.creditsPool { store.bufferPool.expectReads(bytes: bytes) } }

    public func noReadsExpected() { if Self.creditsPool { store.bufferPool.noReadsExpected() } }

    public func warmBuffers(limit: Int, shouldWarm: (_ warmBytes: Int) -> Bool) -> Int {
        store.warmBuffers(limit: limit, shouldWarm: shouldWarm)
    }

    public func dropWarmBuffers() { store.bufferPool.dropWarmed() }

    public func lowBitByteCount(layer: Int, expert: Int) -> Int? { store.lowBitBufferSize }

    public func loadLowBitExpert(layer: Int, expert: Int) throws -> ExpertWeights {
        let stored = try store.readLowBitExpert(layer: layer, expert: expert)
        return ExpertWeights(gate: stored.gate, up: stored.up, down: stored.down, biases: stored.biases)
    }
}
