import Foundation

extension Ops {
    /// gpt-oss's clamped SwiGLU, elementwise, into `gate`: with g = min(gate, limit) and
    /// u = clamp(up, -limit, limit), `g · sigmoid(alpha · g) · (u + 1)` (transformers'
    /// `GptOssExperts._apply_gate`, in the same order of operations).
    public static func clampedSwiGLU(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, count: Int,
                                     alpha: Float, limit: Float) {
        for i in 0..<count {
            let g = min(gate[i], limit)
            let u = min(max(up[i], -limit), limit)
            gate[i] = (u + 1) * (g * (1 / (1 + expf(-(g * alpha)))))
        }
    }
}
