/// Rounds the activations a ggml-typed weight multiplies as llama.cpp's CPU backend does
/// before its integer dot products (each weight type's `vec_dot_type`): blocks of 32 to 8 bits
/// with a float16 scale (Q8_0, also Q8_1's values) for the 32-weight types, blocks of 256 to
/// 8 bits with a float32 scale (Q8_K) for the K-quants and IQ4_XS. MXFP4 (block 32) multiplies
/// Q8_0 activations in llama.cpp too. Products with the
/// rounded activations are llama.cpp's products up to float summation order, which is what
/// makes a GGUF's next-token distribution match llama.cpp's (issue 21); the rounding moves
/// a logit by about 0.3% of its size.
public enum GGMLActivations {
    /// Whether `type` multiplies 8-bit activations in llama.cpp (false: float ones).
    static func rounds(_ type: GGMLType) -> Bool { type.blockSize > 1 }

    /// Writes `x[count]` rounded for `type` into `out` (`count` a multiple of the type's block).
    public static func round(_ type: GGMLType, _ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutablePointer<Float>) {
        if type.blockSize == GGMLType.superBlock {
            for start in stride(from: 0, to: count, by: 256) { roundQ8K(x + start, into: out + start) }
        } else {
            for start in stride(from: 0, to: count, by: 32) { roundQ8_0(x + start, into: out + start) }
        }
    }

    /// Q8_0: d = amax/127 (stored as float16), q = round-to-even(x · 127/amax).
    @inline(__always) static func roundQ8_0(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        var amax: Float = 0
        for i in 0..<32 { amax = max(amax, abs(x[i])) }
        let d = amax / 127
        let inverse: Float = amax != 0 ? 127 / amax : 0
        let stored = Float(Float16(d))
        for i in 0..<32 { out[i] = (x[i] * inverse).rounded(.toNearestOrEven) * stored }
    }

    /// Q8_1 of 32 activations: the unrounded scale d = amax/127 and Σq (q as Q8_0 rounds them),
    /// from which llama.cpp stores the block sum s = float16(d·Σq) (`GGMLKernels.addBlockSumCorrection`).
    @inline(__always) static func q8_1BlockSum(_ x: UnsafePointer<Float>) -> (d: Float, sum: Float) {
        var amax: Float = 0
        for i in 0..<32 { amax = max(amax, abs(x[i])) }
        let inverse: Float = amax != 0 ? 127 / amax : 0
        var sum: Float = 0
        for i in 0..<32 { sum += (x[i] * inverse).rounded(.toNearestOrEven) }
        return (amax / 127, sum)
    }

    /// Q8_K: the signed value of largest magnitude `m`, scale −127/m, q = min(127, round-to-even),
    /// d = 1/scale (float32).
    @inline(__always) static func roundQ8K(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        var amax: Float = 0, extreme: Float = 0
        for i in 0..<256 where abs(x[i]) > amax { amax = abs(x[i]); extreme = x[i] }
        guard amax != 0 else { out.update(repeating: 0, count: 256); return }
        let scale = -127 / extreme
        let d = 1 / scale
        for i in 0..<256 { out[i] = min(127, (scale * x[i]).rounded(.toNearestOrEven)) * d }
    }
}
