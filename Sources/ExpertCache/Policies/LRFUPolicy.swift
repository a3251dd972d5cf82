import Foundation

/// LRFU (Lee et al., 2001), the frequency + recency hybrid: each expert carries a combined
/// recency-frequency value `CRF = Σ 2^(−λ·(now − tᵢ))` over its past references tᵢ, and the
/// lowest CRF is evicted. λ → 0 gives LFU, λ = 1 gives LRU. Time is counted in references to
/// the expert's own layer, so layers of a shared pool age at the same rate; history is kept
/// across evictions, like LFU here.
///
/// Values are compared as `log2(CRF at last reference) + λ·last`, which orders experts as
/// their CRFs decayed to any common "now" would, without recomputing every value.
public struct LRFUPolicy: CachePolicy {
    public let name: String
    /// Decay per layer reference; the half-life is `1/λ` references.
    public let lambda: Double
    private var crf: [ExpertKey: Double] = [:]
    private var last: [ExpertKey: Int] = [:]
    private var layerClock: [Int: Int] = [:]
    private var fresh = FreshInsertions()

    /// A policy with decay `lambda` (default: a half-life of 64 references of a layer).
    public init(lambda: Double = 1.0 / 64, name: String = "lrfu") {
        precondition(lambda >= 0 && lambda <= 1)
        self.lambda = lambda
        self.name = name
    }

    /// `log2(CRF) + λ·last`: larger means more worth keeping.
    public func score(_ key: ExpertKey) -> Double {
        guard let value = crf[key], value > 0 else { return -.infinity }
        return log2(value) + lambda * Double(last[key] ?? 0)
    }

    public mutating func didInsert(_ key: ExpertKey) {
        fresh.inserted(key)
        reference(key)
    }

    public mutating func didAccess(_ key: ExpertKey) {
        if !fresh.consumeAccess(key) { reference(key) }
    }

    public mutating func didEvict(_ key: ExpertKey) { fresh.evicted(key) }

    private mutating func reference(_ key: ExpertKey) {
        let now = layerClock[key.layer, default: 0] + 1
        layerClock[key.layer] = now
        let previous = crf[key].map { $0 * exp2(-lambda * Double(now - last[key]!)) } ?? 0
        crf[key] = 1 + previous
        last[key] = now
    }

    public func victim(among candidates: [ExpertKey]) -> ExpertKey {
        candidates.min { (score($0), $0) < (score($1), $1) }!
    }
}
