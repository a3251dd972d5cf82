/// SplitMix64 (Steele, Lea and Flood, 2014): the project's one seeded random generator. Tiny, fast
/// and identical on every platform, so a seed reproduces a request's tokens, a benchmark's read
/// order or a synthetic checkpoint's weights bit for bit. Not for anything secret.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    /// The generator's whole state; the next output is a mix of `state + γ`.
    public private(set) var state: UInt64

    /// A stream determined by `seed` alone.
    public init(seed: UInt64) { state = seed }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform double in [0, 1) from the top 53 bits of one output.
    public mutating func nextUnitDouble() -> Double {
        Double(next() >> 11) / Double(UInt64(1) << 53)
    }

    /// A uniform float in `range` from the top 24 bits of one output (`lower + width · u`, u in [0, 1)).
    public mutating func nextFloat(in range: Range<Float>) -> Float {
        let u = Float(next() >> 40) / Float(1 << 24)
        return range.lowerBound + (range.upperBound - range.lowerBound) * u
    }
}
