import ModelFormats
import TensorMath

/// The three matrices of one routed expert, a SwiGLU MLP:
/// `down( silu(gate·x) ⊙ up·x )`.
public struct ExpertWeights: @unchecked Sendable {
    /// `[expertWidth, hidden]`
    public let gate: WeightMatrix
    /// `[expertWidth, hidden]`
    public let up: WeightMatrix
    /// `[hidden, expertWidth]`
    public let down: WeightMatrix

    /// Bundles the three matrices.
    public init(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix) {
        self.gate = gate
        self.up = up
        self.down = down
    }

    /// Bytes of all three matrices.
    public var byteCount: Int { gate.byteCount + up.byteCount + down.byteCount }
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
}

extension ExpertProvider {
    public func withExperts(layer: Int, experts: [Int], workers: Int, pinned: () -> Void,
                            _ body: (Int, Int, ExpertWeights) throws -> Void) throws {
        pinned()
        try withExperts(layer: layer, experts: experts) { try body(0, $0, $1) }
    }

    public func prefetch(layer: Int, experts: [Int], pipeline: Bool) {}
    @discardableResult public func cancelPrefetches(layer: Int?, experts: [Int]?) -> Int { 0 }
    public func skipWeakMissing(layer: Int, routes: inout [TokenRouting]) {}
}

/// Holds every routed expert in RAM, loaded once from a checkpoint: the simple provider for
/// models that fit.
public final class InMemoryExpertProvider: ExpertProvider, @unchecked Sendable {
    /// `experts[layer][expert]`; nil entries for dense layers.
    private let experts: [[ExpertWeights]?]

    /// Loads every expert of every MoE layer of `config` from `weights`, using `names` to find
    /// the tensors.
    public init(config: ModelConfig, weights: WeightSource, names: ArchitectureDescription) throws {
        let hidden = config.hiddenSize, width = config.expertIntermediateSize
        var loaded: [[ExpertWeights]?] = []
        for layer in 0..<config.layerCount {
            guard config.isMoELayer(layer) else { loaded.append(nil); continue }
            loaded.append(try (0..<config.expertCount).map { expert in
                let tensorNames = names.expertTensorNames(layer, expert)
                return ExpertWeights(
                    gate: try weights.matrix(tensorNames.gate, rows: width, cols: hidden),
                    up: try weights.matrix(tensorNames.up, rows: width, cols: hidden),
                    down: try weights.matrix(tensorNames.down, rows: hidden, cols: width))
            })
        }
        experts = loaded
    }

    public func withExperts(layer: Int, experts requested: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        guard let layerExperts = experts[layer] else { preconditionFailure("layer \(layer) has no routed experts") }
        for expert in requested { try body(expert, layerExperts[expert]) }
    }
}
