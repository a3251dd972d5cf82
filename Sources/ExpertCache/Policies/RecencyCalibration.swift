import Foundation

/// Learns from the routing stream how much more (or less) often an expert is used at each age
/// than a popularity estimate predicts, so that a policy's recency bonus is measured instead of
/// fixed.
///
/// Ages count a layer's tokens (rows reported to the policy) since the expert's last use. Each
/// token an expert lives through is one *exposure* at its age then; a use closes the run of
/// exposures. Per cell — the age (0-3 one by one, then log2 buckets) by the class of the
/// estimate at the use (log2 classes of the per-token chance) — the table keeps the decayed
/// uses, exposures and the sum of the estimates over those exposures, and its answer is the
/// residual
///
///     bonus(age, estimate) = (uses − Σ estimate) / exposures · exposures / (exposures + shrink)
///
/// per token: zero where the estimate is already right, positive where experts of that age
/// come back more often than their popularity says (consecutive tokens of a trained model, a
/// decode step repeating the previous step's experts), negative where they come back less.
/// Shrunk towards zero while a cell has little evidence.
///
/// Why a residual and not the hazard itself: popular experts are used often and so are young,
/// so the raw use rate by age counts popularity twice; the estimate already carries it.
///
/// Pure state. Exposures of experts that have not been used again yet are counted when the
/// table is refreshed (`refresh`), from the ages the policy passes in.
struct RecencyCalibration: Sendable, Equatable {
    /// Age buckets: ages 0, 1, 2, 3 on their own, then [4, 8), [8, 16), …; the last is open.
    static let ageBuckets = 16
    /// log2 classes of the per-token estimate, from 2^-estimateClasses (and below) to 1.
    static let estimateClasses = 8
    /// Exposures at which a cell's residual counts half.
    static let shrinkExposures = 20.0

    /// Decayed evidence per cell (`ageBuckets × estimateClasses`), closed runs only.
    private var uses: [Double]
    private var exposures: [Double]
    private var predicted: [Double]
    /// The residual per token and the exposures behind it, as of the last refresh.
    private var residual: [Double]
    private var evidence: [Double]

    init() {
        let cells = Self.ageBuckets * Self.estimateClasses
        uses = Array(repeating: 0, count: cells)
        exposures = uses; predicted = uses; residual = uses; evidence = uses
    }

    static func ageBucket(_ age: Int) -> Int {
        if age < 4 { return max(age, 0) }
        return min(ageBuckets - 1, 2 + (Int.bitWidth - 1 - age.leadingZeroBitCount))
    }

    /// The first age of `bucket`, and the first age past it (`Int.max` for the last).
    static func ages(of bucket: Int) -> (lower: Int, upper: Int) {
        if bucket < 4 { return (bucket, bucket + 1) }
        return (1 << (bucket - 2), bucket == ageBuckets - 1 ? Int.max : 1 << (bucket - 1))
    }

    static func estimateClass(_ estimate: Double) -> Int {
        guard estimate > 0 else { return 0 }
        return max(0, min(estimateClasses - 1, Int(log2(estimate).rounded(.down)) + estimateClasses))
    }

    /// An expert with per-token estimate `estimate` was used at `age` (≥ 1) tokens after its
    /// previous use: exposures at ages 1…age, the last one a use.
    mutating func recordUse(age: Int, estimate: Double) {
        guard age >= 1 else { return }
        let row = Self.estimateClass(estimate)
        Self.addExposures(through: age, estimate: estimate, row: row, exposures: &exposures, predicted: &predicted)
        uses[Self.ageBucket(age) * Self.estimateClasses + row] += 1
    }

    /// Recomputes the residuals from the closed runs and the open ones (`open`: each expert not
    /// used since, its age and estimate now; exposures at ages 1…age−1 have passed), then
    /// decays the closed evidence by `decay`.
    mutating func refresh(open: [(age: Int, estimate: Double)], decay: Double) {
        var allExposures = exposures, allPredicted = predicted
        for (age, estimate) in open where age > 1 {
            Self.addExposures(through: age - 1, estimate: estimate, row: Self.estimateClass(estimate),
                              exposures: &allExposures, predicted: &allPredicted)
        }
        for cell in uses.indices {
            evidence[cell] = allExposures[cell]
            residual[cell] = allExposures[cell] > 0 ? (uses[cell] - allPredicted[cell]) / allExposures[cell] : 0
            uses[cell] *= decay; exposures[cell] *= decay; predicted[cell] *= decay
        }
    }

    /// What to add to a per-token estimate of `estimate` for an expert last used `age` tokens ago.
    func bonus(age: Int, estimate: Double) -> Double {
        let cell = Self.ageBucket(age) * Self.estimateClasses + Self.estimateClass(estimate)
        return residual[cell] * evidence[cell] / (evidence[cell] + Self.shrinkExposures)
    }

    /// Adds one exposure per age 1…through to the cells of `row`.
    private static func addExposures(through last: Int, estimate: Double, row: Int,
                                     exposures: inout [Double], predicted: inout [Double]) {
        var bucket = 1
        while bucket < ageBuckets {
            let (lower, upper) = ages(of: bucket)
            if lower > last { break }
            let count = Double(min(last + 1, upper) - lower)
            exposures[bucket * estimateClasses + row] += count
            predicted[bucket * estimateClasses + row] += count * estimate
            bucket += 1
        }
    }
}
