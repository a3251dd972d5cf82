import Foundation

/// One attention head as llama.cpp's CPU flash attention computes it over an f16 KV cache
/// (llama-server's default): the query rounded to float16, one key at a time with an online
/// softmax, and the weighted sum of values kept in a float16 accumulator that is rounded after
/// every key, divided by the softmax sum at the end. The f16 accumulator moves a head's output
/// by up to ~1e-3 relative, which is enough to flip a near-tied expert choice in the next
/// layer; following it is what brings a GGUF's next-token distribution within 0.1 of
/// llama.cpp's on the Qwen3-MoE fixtures (issue 21). Only the llama.cpp comparison uses it.
public enum GGMLFlashAttention {
    /// `out[dim]` = softmax_j(scale · K[j] · q) · V[j] over `count` float16 keys and values
    /// (bits) at `keys + j · stride`, `values + j · stride`.
    public static func head(query: UnsafePointer<Float>, halfKeys keys: UnsafePointer<UInt16>,
                            halfValues values: UnsafePointer<UInt16>, stride: Int, count: Int, dim: Int,
                            scale: Float, into out: UnsafeMutablePointer<Float>) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * dim) { buffer in
            let q = buffer.baseAddress!        // [dim] query rounded to f16
            let acc = q + dim                  // [dim] f16-valued accumulator, held as float
            for d in 0..<dim { q[d] = Float(Float16(query[d])); acc[d] = 0 }
            var maximum = -Float.infinity, sum: Float = 0
            for j in 0..<count {
                let key = keys + j * stride, value = values + j * stride
                var s: Float = 0
                for d in 0..<dim { s += Float(Float16(bitPattern: key[d])) * q[d] }
                s *= scale
                var ms: Float = 1, vs: Float = 1
                if s > maximum {
                    ms = maximum == -.infinity ? 0 : expf(maximum - s)
                    maximum = s
                    for d in 0..<dim { acc[d] = Float(Float16(acc[d] * ms)) }
                } else {
                    vs = expf(s - maximum)
                }
                for d in 0..<dim { acc[d] = Float(Float16(acc[d] + Float(Float16(bitPattern: value[d])) * vs)) }
                sum = sum * ms + vs
            }
            let inverse: Float = sum == 0 ? 0 : 1 / sum
            for d in 0..<dim { out[d] = acc[d] * inverse }
        }
    }
}
