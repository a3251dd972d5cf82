import Foundation

/// A policy that learns, while it runs, how long an expert stays away: the expected (log) time
/// until an expert's next use given its age and its recent and long-run reference rates, and
/// evicts the expert expected back last — an online estimate of Belady's choice.
///
/// The estimator is a table in the spirit of EVA (Beckmann and Sanchez, "Maximizing Cache
/// Performance Under Uncertainty", HPCA 2017): each time an expert is used again after a gap
/// of `g` references (counted, as in `LRFUPolicy`, in references to its own layer), the table
/// learns, for every age bucket `2^j < g` the expert passed through, that an expert of its
/// class at that age came back `g − 2^j` later. Classes are the expert's two decayed reference
/// counts (`LRFUPolicy`'s CRF at half-lives of 64 and 1,024 references) as they were at its
/// previous use, in log2 buckets. Cells with too little evidence back off to the age and the
/// short-run class, then to the age alone, then to log2(age) (LRU's order). Old
/// evidence fades (each cell's weights decay by `decay` per update), so the table follows a
/// workload whose routing drifts.
///
/// Measured on the trained demo's routing trace it closes 61-66% of the LRU→Belady gap at 8 and
/// 12 of 32 experts per layer and 49-52% at 16 (docs/expert-cache.md, "A policy that learns").
/// Pure state, no I/O: the bookkeeping calls it under the cache lock.
public struct LearnedPolicy: CachePolicy {
    public let name: String
    /// Tunables; the defaults are the measured ones.
    public struct Parameters: Sendable, Equatable {
        /// Decay per layer reference of the short-run and long-run counts.
        public var shortLambda = 1.0 / 64, longLambda = 1.0 / 1024
        /// Age buckets `[2^j, 2^(j+1))`, j < ageBuckets; older ages share the last one.
        public var ageBuckets = 16
        /// log2 classes of a decayed count (0: never referenced before).
        public var countClasses = 10
        /// Each cell's evidence is multiplied by this at every update of the cell.
        public var decay = 0.995
        /// A cell is trusted from this much (decayed) evidence on.
        public var minimumEvidence = 4.0
        public init() {}
    }

    public let parameters: Parameters
    private var keys: [ExpertKey: KeyState] = [:]
    private var layerClock: [Int: Int] = [:]
    /// Three tables of (Σ log2 remaining, evidence), each `[..., ageBuckets]`: by both classes,
    /// by the short-run class, by age alone.
    private var byBoth: EvidenceTable, byShort: EvidenceTable, byAge: EvidenceTable

    /// What the policy keeps per expert (also for evicted ones: their history outlives residency).
    struct KeyState: Sendable {
        /// The layer clock at the last use (meaningful once `used`).
        var last: Int
        var used: Bool
        /// The layer clock at the last use or insertion: an expert's age counts from it.
        var touched: Int
        var shortCount: Double
        var longCount: Double
        /// The classes at the last reference: the row the next gap's evidence goes to.
        var shortClass: Int
        var longClass: Int
    }

    public init(parameters: Parameters = Parameters(), name: String = "learned") {
        precondition(parameters.ageBuckets > 0 && parameters.countClasses > 1 && parameters.decay > 0 && parameters.decay <= 1)
        self.parameters = parameters
        self.name = name
        let classes = parameters.countClasses, ages = parameters.ageBuckets
        byBoth = EvidenceTable(rows: classes * classes, ages: ages)
        byShort = EvidenceTable(rows: classes, ages: ages)
        byAge = EvidenceTable(rows: 1, ages: ages)
    }

    /// An insertion is not a use: a prefetched expert may never be used, and a gap learned from
    /// it would teach the table the predictor's guesses instead of the routing. It only restarts
    /// the expert's age, so that what was just read is not the first thing evicted. (A demand
    /// miss's use follows at once as `didAccess`, so a replay without prefetch counts each use once.)
    public mutating func didInsert(_ key: ExpertKey) {
        let now = layerClock[key.layer, default: 0]
        keys[key, default: KeyState(last: now, used: false, touched: now, shortCount: 0, longCount: 0, shortClass: 0, longClass: 0)].touched = now
    }

    public mutating func didAccess(_ key: ExpertKey) { reference(key) }

    public mutating func didEvict(_ key: ExpertKey) {}

    public func victim(among candidates: [ExpertKey]) -> ExpertKey {
        // The largest expected log time to the next use; ties (and cold tables) to the key order.
        var best = candidates[0], bestScore = score(best)
        for key in candidates.dropFirst() {
            let value = score(key)
            if value > bestScore || (value == bestScore && key < best) { (best, bestScore) = (key, value) }
        }
        return best
    }

    /// Expected log2 references until `key`'s next use, from the most specific trusted cell
    /// (larger: evict sooner); LRFU's value breaks ties.
    public func score(_ key: ExpertKey) -> Double {
        guard let state = keys[key] else { return .infinity }  // never referenced: nothing says keep it
        let age = max(1, layerClock[key.layer, default: 0] - state.touched)
        let bucket = min(parameters.ageBuckets - 1, Int.bitWidth - 1 - age.leadingZeroBitCount)
        let lrfu = lrfuValue(key)
        let both = state.shortClass * parameters.countClasses + state.longClass
        let trusted = parameters.minimumEvidence
        // Without evidence, log2(age): an expert away longer is expected away longer (LRU's order,
        // on the same scale as the learned values). Measured on the demo's trace at 16 of 32
        // experts per layer, this prior closes 52% of the gap where a "keep the unknown" fallback
        // closed 44%.
        let mean = byBoth.mean(row: both, age: bucket, minimumEvidence: trusted)
            ?? byShort.mean(row: state.shortClass, age: bucket, minimumEvidence: trusted)
            ?? byAge.mean(row: 0, age: bucket, minimumEvidence: trusted)
            ?? log2(Double(age))
        return mean - 1e-9 * lrfu
    }

    /// `LRFUPolicy`'s value at the short-run half-life (larger: more worth keeping).
    func lrfuValue(_ key: ExpertKey) -> Double {
        guard let state = keys[key], state.used else { return 0 }
        return log2(state.shortCount) + parameters.shortLambda * Double(state.last)
    }

    private mutating func reference(_ key: ExpertKey) {
        let now = layerClock[key.layer, default: 0] + 1
        layerClock[key.layer] = now
        var state = keys[key] ?? KeyState(last: now, used: false, touched: now, shortCount: 0, longCount: 0, shortClass: 0, longClass: 0)
        let gap = state.used ? now - state.last : 0
        if gap > 0 {
            // The expert passed through every age bucket below its gap: at age 2^j it was g − 2^j away.
            let both = state.shortClass * parameters.countClasses + state.longClass
            var bucket = 0
            while bucket < parameters.ageBuckets && 1 << bucket < gap {
                let remaining = log2(Double(gap - 1 << bucket))
                byBoth.add(remaining, row: both, age: bucket, decay: parameters.decay)
                byShort.add(remaining, row: state.shortClass, age: bucket, decay: parameters.decay)
                byAge.add(remaining, row: 0, age: bucket, decay: parameters.decay)
                bucket += 1
            }
        }
        state.shortCount = 1 + state.shortCount * exp2(-parameters.shortLambda * Double(gap))
        state.longCount = 1 + state.longCount * exp2(-parameters.longLambda * Double(gap))
        state.last = now
        state.touched = now
        state.used = true
        state.shortClass = countClass(state.shortCount)
        state.longClass = countClass(state.longCount)
        keys[key] = state
    }

    /// 1 + ⌊log2 count⌋ for counts ≥ 1, capped at the last class.
    private func countClass(_ count: Double) -> Int {
        count < 1 ? 0 : min(parameters.countClasses - 1, 1 + Int(log2(count)))
    }
}

/// Decayed sums of observed log2 remaining times and their evidence, `[rows, ages]`.
struct EvidenceTable: Sendable {
    private var sums: [Double]
    private var weights: [Double]
    private let ages: Int

    init(rows: Int, ages: Int) {
        sums = [Double](repeating: 0, count: rows * ages)
        weights = sums
        self.ages = ages
    }

    mutating func add(_ value: Double, row: Int, age: Int, decay: Double) {
        let cell = row * ages + age
        sums[cell] = sums[cell] * decay + value
        weights[cell] = weights[cell] * decay + 1
    }

    func mean(row: Int, age: Int, minimumEvidence: Double) -> Double? {
        let cell = row * ages + age
        return weights[cell] >= minimumEvidence ? sums[cell] / weights[cell] : nil
    }
}
