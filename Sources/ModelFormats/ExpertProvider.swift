import Foundation
import TensorMath

// The expert weight types and the provider seam sit here, below MoEModels, so that expert
// caches and trace tools can serve and observe experts without importing the model code.

/// The three matrices of one routed expert, a SwiGLU MLP:
/// `down( silu(gate·x) ⊙ up·x )`.
public struct ExpertWeights: @unchecked Sendable {
    /// `[expertWidth, hidden]`
    public let gate: WeightMatrix
    /// `[expertWidth, hidden]`
    public let up: WeightMatrix
    /// `[hidden, expertWidth]`
    public let down: WeightMatrix
    /// The three matrices' output biases (gpt-oss), nil for none.
    public let biases: ExpertBiases?
    /// Set while the expert is still arriving from disk (a split read handed out early): `gate`
    /// and `up` are in memory, but `down` (and the checksum over the whole blob) is not until
    /// `rest.wait()` returns. Nil for an expert wholly in memory. Only a caller that asked for
    /// experts early (`withExperts(..., startsBeforeDown: true)`) ever sees it set.
    public let rest: ExpertArrival?

    /// Bundles the three matrices (and their biases, if any).
    public init(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix, biases: ExpertBiases? = nil, rest: ExpertArrival? = nil) {
        self.gate = gate
        self.up = up
        self.down = down
        self.biases = biases
        self.rest = rest
    }

    /// Bytes of all three matrices and their biases.
    public var byteCount: Int { gate.byteCount + up.byteCount + down.byteCount + (biases?.byteCount ?? 0) }
}

/// The rest of an expert that was handed out before its read finished (a split read): the
/// reader finishes it once the down matrix is in memory and the whole blob has passed its
/// checksum, or with the error that ended the read. Whoever computes with the early weights
/// calls `wait()` before it touches `down`; an error there means the gate and up products
/// already made were from a blob that failed, and must be thrown away with the request.
public final class ExpertArrival: @unchecked Sendable {
    private let condition = NSCondition()
    private var finished = false
    private var failure: Error?
    private var waited: UInt64 = 0

    public init() {}

    /// Blocks until the rest has arrived; throws the read's error if it failed.
    public func wait() throws {
        condition.lock()
        defer { condition.unlock() }
        if !finished {
            let start = DispatchTime.now().uptimeNanoseconds
            while !finished { condition.wait() }
            waited += DispatchTime.now().uptimeNanoseconds - start
        }
        if let failure { throw failure }
    }

    /// The reader's side: the rest has arrived and checked out (`failure` nil) or the read failed.
    /// Only the first call counts.
    public func finish(failure: Error? = nil) {
        condition.lock()
        defer { condition.unlock() }
        guard !finished else { return }
        finished = true
        self.failure = failure
        condition.broadcast()
    }

    /// Whether the read has ended (either way).
    public var isFinished: Bool { condition.lock(); defer { condition.unlock() }; return finished }

    /// Seconds `wait()` spent blocked, summed over calls.
    public var waitedSeconds: Double { condition.lock(); defer { condition.unlock() }; return Double(waited) / 1e9 }
}

/// The float32 biases added to an expert's gate, up and down outputs; `owner` keeps the memory
/// alive (an expert blob's buffer, or arrays of their own).
public struct ExpertBiases: @unchecked Sendable {
    /// `[expertWidth]`
    public let gate: UnsafePointer<Float>
    /// `[expertWidth]`
    public let up: UnsafePointer<Float>
    /// `[hidden]`
    public let down: UnsafePointer<Float>
    /// Elements of `gate` and `up`, and of `down`.
    public let width: Int, hidden: Int
    /// Keeps the memory behind the pointers alive.
    public let owner: AnyObject?

    /// Views biases that `owner` keeps alive.
    public init(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, down: UnsafePointer<Float>, width: Int, hidden: Int, owner: AnyObject?) {
        self.gate = gate
        self.up = up
        self.down = down
        self.width = width
        self.hidden = hidden
        self.owner = owner
    }

    /// Biases owning a copy of `gate`, `up` (`[width]` each) and `down` (`[hidden]`).
    public init(gate: [Float], up: [Float], down: [Float]) {
        precondition(gate.count == up.count, "gate and up biases differ in length")
        let buffer = AlignedBuffer<Float>(gate + up + down)
        self.init(gate: UnsafePointer(buffer.pointer), up: UnsafePointer(buffer.pointer + gate.count),
                  down: UnsafePointer(buffer.pointer + 2 * gate.count), width: gate.count, hidden: down.count, owner: buffer)
    }

    /// Bytes of the three vectors.
    public var byteCount: Int { (2 * width + hidden) * MemoryLayout<Float>.stride }
}

/// The only way the models reach routed experts. The in-RAM provider below serves small
/// models; the offloading expert cache serves models larger than RAM behind the same protocol.
public protocol ExpertProvider: AnyObject, Sendable {
    /// Calls `body` once for each of the distinct `experts` of layer `layer`, each while its
    /// weights are resident and cannot be evicted. A provider that loads from disk runs the
    /// resident experts first and requests all missing ones at once before waiting on any.
    /// An error (an unreadable or corrupt expert) ends the call; `body` is not called for the
    /// remaining experts.
    func withExperts(layer: Int, experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws

    /// As `withExperts`, but `body(worker, expert, weights)` may run on up to `workers`
    /// threads at once (`worker` in `0..<workers` names the thread, for per-thread scratch).
    /// `pinned` runs once, after every requested expert is pinned or queued and before any
    /// `body`. The default runs `pinned` and then every `body` on the calling thread as worker 0.
    func withExperts(layer: Int, experts: [Int], workers: Int, pinned: () -> Void,
                     _ body: (Int, Int, ExpertWeights) throws -> Void) throws

    /// As `withExperts(layer:experts:workers:pinned:_:)`; in addition, once every expert that was
    /// resident has run and some misses are still loading, `residentsRan(completed)` runs once as
    /// worker 0 (the calling thread, unless the section fell back to a thread pool; never while
    /// the caller runs anything else), with the experts whose `body` has returned (their outputs
    /// are written).
    /// The model runs a shadow of the next layer there (`ShadowRouting`), while the disk is busy
    /// anyway. Not called when nothing was missing. The default never calls it.
    func withExperts(layer: Int, experts: [Int], workers: Int, pinned: () -> Void, residentsRan: (([Int]) -> Void)?,
                     _ body: (Int, Int, ExpertWeights) throws -> Void) throws

    /// As `withExperts(layer:experts:workers:pinned:residentsRan:_:)`; with `startsBeforeDown`,
    /// a missing expert read in two parts (a split read) may be handed to `body` as soon as its
    /// gate and up matrices are in memory, with `weights.rest` set: `body` must call
    /// `weights.rest?.wait()` before it reads `down` or the biases, and let its error end the
    /// call (the blob failed its read or checksum). The default ignores `startsBeforeDown`.
    func withExperts(layer: Int, experts: [Int], workers: Int, pinned: () -> Void, residentsRan: (([Int]) -> Void)?,
                     startsBeforeDown: Bool, _ body: (Int, Int, ExpertWeights) throws -> Void) throws

    /// A hint that `experts` of `layer` will probably be needed soon. Never required for
    /// correctness; the default does nothing. `pipeline`: the hint is a prefill chunk's union
    /// (most of it will be used), so a cache's per-layer bound on speculation does not apply.
    func prefetch(layer: Int, experts: [Int], pipeline: Bool)
    /// Drops queued, not yet started prefetches of `experts` of `layer` (a prediction that
    /// turned out wrong), so they do not take disk time from reads that are needed.
    @discardableResult func cancelPrefetches(layer: Int?, experts: [Int]?) -> Int

    /// Opt-in lossy mode (`WeakExpertSkipping`): removes from `routes` the weak experts of
    /// `layer` that are not resident, where residency is known. The default keeps every expert.
    func skipWeakMissing(layer: Int, routes: inout [TokenRouting])

    /// Whether any of `experts` of `layer` is not in memory now (its read runs or waits), so
    /// that using them means waiting for the disk. The default (everything in memory): false.
    func isReading(layer: Int, experts: [Int]) -> Bool
}

extension ExpertProvider {
    public func withExperts(layer: Int, experts: [Int], workers: Int, pinned: () -> Void,
                            _ body: (Int, Int, ExpertWeights) throws -> Void) throws {
        pinned()
        try withExperts(layer: layer, experts: experts) { try body(0, $0, $1) }
    }

    public func withExperts(layer: Int, experts: [Int], workers: Int, pinned: () -> Void, residentsRan: (([Int]) -> Void)?,
                            _ body: (Int, Int, ExpertWeights) throws -> Void) throws {
        try withExperts(layer: layer, experts: experts, workers: workers, pinned: pinned, body)
    }

    public func withExperts(layer: Int, experts: [Int], workers: Int, pinned: () -> Void, residentsRan: (([Int]) -> Void)?,
                            startsBeforeDown: Bool, _ body: (Int, Int, ExpertWeights) throws -> Void) throws {
        try withExperts(layer: layer, experts: experts, workers: workers, pinned: pinned, residentsRan: residentsRan, body)
    }

    public func prefetch(layer: Int, experts: [Int], pipeline: Bool) {}
    @discardableResult public func cancelPrefetches(layer: Int?, experts: [Int]?) -> Int { 0 }
    public func skipWeakMissing(layer: Int, routes: inout [TokenRouting]) {}
    public func isReading(layer: Int, experts: [Int]) -> Bool { false }
}

/// Receives every MoE layer's routing decisions as they are made (trace recording, predictor
/// statistics). Called on the engine thread; keep it cheap.
public protocol RoutingObserver: AnyObject {
    /// `routes[row]` for each of the step's token rows in MoE layer `layer`; `gateInput` is the
    /// normalised hidden state the router saw, `[rows, hidden]`. Called before any expert of
    /// the layer runs, so loads started here overlap the layer's expert compute.
    func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int)

    /// Layer `layer` is about to run attention on `input`, the normalised hidden state
    /// `[rows, hidden]`. Loads started here overlap the attention.
    func willRunAttention(layer: Int, input: UnsafePointer<Float>, rowCount: Int)

    /// A step is about to run; `lastRows` are the rows holding each sequence's last new token
    /// (the tokens whose next token the following step will run), in ascending order.
    func willRunStep(lastRows: [Int])

    /// The step that `willRunStep(lastRows:)` announced has run every layer and its LM head
    /// (not called when the step threw). What the step cost is the time between the two.
    func didRunStep()

    /// The step about to run holds these sequences' rows (ids stay the same across a sequence's
    /// steps; `KVCache.sequenceID`), in row order. Called right after `willRunStep(lastRows:)`.
    func willRunSequences(_ sequences: [SequenceRows])

    /// Sequence `id` finished or was dropped: it runs no more steps.
    func sequenceEnded(_ id: Int)

    /// A shadow of MoE layer `layer` (its attention and router run on the previous layer's
    /// output with only the experts that were resident, while the misses load) chose `routes`:
    /// a late, sharper guess at what `layer`'s router will choose (`ShadowRouting`).
    func didShadowRoute(layer: Int, routes: [TokenRouting])

    /// An early shadow of MoE layer `layer` (run as the layer before routes, on its experts'
    /// surrogates) is confident of `experts`: guesses to add, withdrawing nothing, since the
    /// sharper shadow after the residents may still follow (`ShadowRouting`).
    func didShadowGuess(layer: Int, experts: [Int])
}

/// The rows of one sequence in a step.
public struct SequenceRows: Sendable, Equatable {
    /// The sequence (`KVCache.sequenceID`).
    public var id: Int
    /// Its token rows in the step.
    public var rows: Range<Int>
    public init(id: Int, rows: Range<Int>) {
        self.id = id
        self.rows = rows
    }
}

extension RoutingObserver {
    public func willRunAttention(layer: Int, input: UnsafePointer<Float>, rowCount: Int) {}
    public func willRunStep(lastRows: [Int]) {}
    public func didRunStep() {}
    public func willRunSequences(_ sequences: [SequenceRows]) {}
    public func sequenceEnded(_ id: Int) {}
    public func didShadowRoute(layer: Int, routes: [TokenRouting]) {}
    public func didShadowGuess(layer: Int, experts: [Int]) {}
}
