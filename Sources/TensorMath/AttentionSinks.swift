import Foundation

extension Ops {
    /// Softmax over `count` attention scores and one extra sink logit, in place, with the
    /// sink's share dropped afterwards (gpt-oss's learned sinks): `x[j] ← exp(x[j] - m) /
    /// (Σ exp(x - m) + exp(sink - m))` with m the largest of all, so the weights sum to less
    /// than one by the sink's share.
    public static func softmax(_ x: UnsafeMutablePointer<Float>, count: Int, sink: Float) {
        var maximum = sink
        for i in 0..<count { maximum = max(maximum, x[i]) }
        var total: Float = 0
        for i in 0..<count { let e = expf(x[i] - maximum); x[i] = e; total += e }
        total += expf(sink - maximum)
        let inverse = 1 / total
        for i in 0..<count { x[i] *= inverse }
    }
}
