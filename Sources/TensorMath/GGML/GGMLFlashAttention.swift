import Foundation

/// One attention head as llama.cpp's CPU flash attention computes it over an f16 KV cache
/// (llama-server's default): the query rounded to float16, one key at a time with an online
/// softmax, and the weighted sum of values kept in a float16 accumulator that is rounded after
/// every key, divided by the softmax sum at the end. The f16 accumulator moves a head's output
/// by up to ~1e-3 relative, which is enough to flip a near-tied expert choice in the next
/// layer; following it is what brings a GGUF's next-token distribution within 0.1 of
/// llama.cpp's on the Qwen3-MoE fixtures (issue 21). Only the llama.cpp comparison uses it.
/// Sums follow llama.cpp's AVX-512 build (this machine's): `dot`, and fused multiply-adds in
/// the 64-wide part of the value accumulation.
public enum GGMLFlashAttention {
    /// Elements per step of ggml's f16 vector code on an AVX-512 CPU (`GGML_F16_STEP`): four
    /// registers of 16 lanes.
    static let simdStep = 64

    /// `ggml_vec_dot_f16` of a float16 key with a float16-valued query as llama.cpp's AVX-512
    /// build sums it: per 64-element step, four 16-lane accumulators of fused multiply-adds;
    /// then registers 0+2 and 1+3, those two, and the 16 lanes by halves (8, 4, 2, 1); the
    /// remaining elements added in double. Every product of two float16 values is exact in
    /// float32, so only this order of sums separates it from another float32 sum — which still
    /// moves a score in its last bit, enough to flip a float16 rounding in the accumulator.
    static func dot(halfKeys key: UnsafePointer<UInt16>, query q: UnsafePointer<Float>, dim: Int) -> Float {
        let wide = dim & ~(simdStep - 1)
        var total: Double = 0
        if wide > 0 {
            var l0 = SIMD16<Float>(), l1 = SIMD16<Float>(), l2 = SIMD16<Float>(), l3 = SIMD16<Float>()
            func accumulate(_ lanes: inout SIMD16<Float>, _ base: Int) {
                for l in 0..<16 { lanes[l] = lanes[l].addingProduct(Float(Float16(bitPattern: key[base + l])), q[base + l]) }
            }
            for start in stride(from: 0, to: wide, by: simdStep) {
                accumulate(&l0, start); accumulate(&l1, start + 16); accumulate(&l2, start + 32); accumulate(&l3, start + 48)
            }
            let folded = (l0 + l2) + (l1 + l3)
            let eight = folded.lowHalf + folded.highHalf
            let four = eight.lowHalf + eight.highHalf
            total = Double((four[0] + four[2]) + (four[1] + four[3]))
        }
        for i in wide..<dim { total += Double(Float(Float16(bitPattern: key[i])) * q[i]) }
        return Float(total)
    }

    /// `out[dim]` = softmax_j(scale · K[j] · q) · V[j] over `count` float16 keys and values
    /// (bits) at `keys + j · stride`, `values + j · stride`. A `sink` logit (gpt-oss) joins the
    /// softmax's sum with no value, after the keys and in float32, as ggml adds it.
    public static func head(query: UnsafePointer<Float>, halfKeys keys: UnsafePointer<UInt16>,
                            halfValues values: UnsafePointer<UInt16>, stride: Int, count: Int, dim: Int,
                            scale: Float, sink: Float? = nil, into out: UnsafeMutablePointer<Float>) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * dim) { buffer in
            let q = buffer.baseAddress!        // [dim] query rounded to f16
            let acc = q + dim                  // [dim] f16-valued accumulator, held as float
            for d in 0..<dim { q[d] = Float(Float16(query[d])); acc[d] = 0 }
            var maximum = -Float.infinity, sum: Float = 0
            for j in 0..<count {
                let key = keys + j * stride, value = values + j * stride
                var s = dot(halfKeys: key, query: q, dim: dim)
                s *= scale
                var ms: Float = 1, vs: Float = 1
                if s > maximum {
                    ms = maximum == -.infinity ? 0 : expf(maximum - s)
                    maximum = s
                    for d in 0..<dim { acc[d] = Float(Float16(acc[d] * ms)) }
                } else {
                    vs = expf(s - maximum)
                }
                // ggml_vec_mad_f16: 64-wide SIMD steps with a fused multiply-add, the rest scalar.
                let wide = dim & ~(simdStep - 1)
                for d in 0..<wide { acc[d] = Float(Float16(acc[d].addingProduct(Float(Float16(bitPattern: value[d])), vs))) }
                for d in wide..<dim { acc[d] = Float(Float16(acc[d] + Float(Float16(bitPattern: value[d])) * vs)) }
                sum = sum * ms + vs
            }
            if let sink {
                if sink > maximum {
                    let ms = expf(maximum - sink)
                    for d in 0..<dim { acc[d] *= ms }
                    sum *= ms
                    sum += 1
                } else {
                    sum += expf(sink - maximum)
                }
            }
            let inverse: Float = sum == 0 ? 0 : 1 / sum
            for d in 0..<dim { out[d] = acc[d] * inverse }
        }
    }
}
