import Foundation
import ModelFormats

/// Rotary position embeddings as transformers computes them: the default inverse frequencies or
/// YaRN's (`_compute_yarn_parameters`, with its cos/sin scale `attention_factor`), over all of
/// a head's dimensions or only the first `partial_rotary_factor` of them, in the Llama
/// `rotate_half` layout (dimension `i` pairs with `i + rotaryDim/2`) or DeepSeek's interleaved
/// one (dimension `2i` pairs with `2i + 1`).
public struct RotaryEmbedding: Sendable {
    /// Which dimensions rotate together.
    public enum Layout: Sendable, Equatable {
        /// Llama's `rotate_half`: `i` with `i + rotaryDim/2`.
        case rotateHalf
        /// DeepSeek's pairs `(2i, 2i+1)` (`rope_interleave`, DeepSeek-V2's complex product). The
        /// result stays in place: transformers' V3 path writes the pairs de-interleaved, but both
        /// q and k move alike, so every q·k product (all that attention reads) is the same.
        case interleaved
    }

    /// Width of one head (the stride between heads in `apply(_:headCount:position:)`).
    public let headDim: Int
    /// Dimensions that rotate: the first `rotaryDim` of each head (`int(headDim · partial_rotary_factor)`).
    public let rotaryDim: Int
    /// Inverse frequencies `[rotaryDim / 2]`, in float32 as PyTorch computes them.
    public let inverseFrequencies: [Float]
    /// Scale of cos and sin (YaRN's `attention_factor`; 1 for the default RoPE).
    public let attentionScaling: Float
    /// Pairing of the rotated dimensions.
    public let layout: Layout
    /// llama.cpp's `theta_scale`, `powf(base, −2/rotaryDim)` in float32, for `llamaCppAngles`;
    /// nil for YaRN (whose llama.cpp angles are not emulated).
    let llamaCppThetaScale: Float?

    /// The default RoPE over all of `headDim` with base `theta`, `rotate_half` layout.
    public init(headDim: Int, theta: Double) {
        self.init(headDim: headDim, theta: theta, parameters: RopeParameters(), maxPositionEmbeddings: 0)
    }

    /// RoPE for heads of `headDim` with base `theta` and `parameters` (variant, partial
    /// rotation); `maxPositionEmbeddings` resolves YaRN's null `factor` as transformers does.
    public init(headDim: Int, theta: Double, parameters: RopeParameters, maxPositionEmbeddings: Int,
                layout: Layout = .rotateHalf) {
        self.headDim = headDim
        self.layout = layout
        // int(head_dim * partial_rotary_factor), rounded down to whole pairs.
        let dim = Int(Double(headDim) * parameters.partialRotaryFactor) / 2 * 2
        rotaryDim = dim
        llamaCppThetaScale = parameters.kind == .yarn || dim == 0 ? nil : powf(Float(theta), -2 / Float(dim))
        // torch: base ** (arange(0, dim, 2).float() / dim), in float32.
        let base = Double(Float(theta))
        let positionFrequencies: [Float] = (0..<(dim / 2)).map { i in
            Float(pow(base, Double(Float(2 * i) / Float(dim))))
        }
        guard parameters.kind == .yarn, let yarn = parameters.yarn else {
            inverseFrequencies = positionFrequencies.map { 1 / $0 }
            attentionScaling = 1
            return
        }
        let factor = yarn.factor ?? Double(maxPositionEmbeddings) / Double(yarn.originalMaxPositionEmbeddings)
        let attentionFactor: Double
        if let explicit = yarn.attentionFactor {
            attentionFactor = explicit
        } else if let mscale = yarn.mscale, let all = yarn.mscaleAllDim, mscale != 0, all != 0 {
            attentionFactor = RopeParameters.yarnMscale(factor, mscale) / RopeParameters.yarnMscale(factor, all)
        } else {
            attentionFactor = RopeParameters.yarnMscale(factor)
        }
        attentionScaling = Float(attentionFactor)

        // The dimension (of `dim`) whose wavelength makes `rotations` turns over the original context.
        func correctionDimension(_ rotations: Double) -> Double {
            Double(dim) * Foundation.log(Double(yarn.originalMaxPositionEmbeddings) / (rotations * 2 * Double.pi))
                / (2 * Foundation.log(Double(Float(theta))))
        }
        var low = correctionDimension(yarn.betaFast), high = correctionDimension(yarn.betaSlow)
        if yarn.truncate {
            low = low.rounded(.down)
            high = high.rounded(.up)
        }
        low = max(low, 0)
        high = min(high, Double(dim - 1))
        if low == high { high += 0.001 } // transformers: prevents a division by zero
        let span = Float(high - low), lowFloat = Float(low)
        let scaledFactor = Float(factor)
        inverseFrequencies = positionFrequencies.enumerated().map { i, frequency in
            let extrapolation = 1 / frequency
            let interpolation = 1 / (scaledFactor * frequency)
            let ramp = min(max((Float(i) - lowFloat) / span, 0), 1)
            let extrapolationWeight = 1 - ramp
            return interpolation * (1 - extrapolationWeight) + extrapolation * extrapolationWeight
        }
    }

    /// Rotates `headCount` heads of one token at `position`, in place. `x`: [headCount, headDim].
    public func apply(_ x: UnsafeMutablePointer<Float>, headCount: Int, position: Int) {
        apply(x, headCount: headCount, headStride: headDim, position: position)
    }

    /// Rotates the first `rotaryDim` values of `headCount` heads that start `headStride` floats
    /// apart (a head's rotary part inside a wider head: multi-head latent attention), in place.
    ///
    /// `llamaCppAngles` (default RoPE only): the angles as llama.cpp's CPU backend computes them
    /// (`ggml_rope_cache_init`): θ₀ = position, θᵢ₊₁ = θᵢ · theta_scale in float32, one rounding per
    /// step, rather than position · inverse frequency. The angles differ by ~1e-6 relative, which
    /// moves a float16-cached key by a last bit now and then; the GGUF comparison with llama.cpp
    /// (head size 64) needs them to agree.
    public func apply(_ x: UnsafeMutablePointer<Float>, headCount: Int, headStride: Int, position: Int,
                      llamaCppAngles: Bool = false) {
        let half = rotaryDim / 2
        guard half > 0 else { return }
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * half) { table in
            let cosines = table.baseAddress!, sines = cosines + half
            if llamaCppAngles, let thetaScale = llamaCppThetaScale {
                var angle = Float(position)
                for i in 0..<half {
                    cosines[i] = cosf(angle)
                    sines[i] = sinf(angle)
                    angle *= thetaScale
                }
            } else {
                for i in 0..<half {
                    let angle = Float(position) * inverseFrequencies[i] // float32 product, as torch
                    cosines[i] = cosf(angle) * attentionScaling
                    sines[i] = sinf(angle) * attentionScaling
                }
            }
            for h in 0..<headCount {
                let head = x + h * headStride
                switch layout {
                case .rotateHalf where llamaCppAngles:
                    // As GCC contracts llama.cpp's rotate_pairs: the first product fused.
                    for i in 0..<half {
                        let a = head[i], b = head[i + half]
                        head[i] = (-(b * sines[i])).addingProduct(a, cosines[i])
                        head[i + half] = (b * cosines[i]).addingProduct(a, sines[i])
                    }
                case .rotateHalf:
                    for i in 0..<half {
                        let a = head[i], b = head[i + half]
                        head[i] = a * cosines[i] - b * sines[i]
                        head[i + half] = b * cosines[i] + a * sines[i]
                    }
                case .interleaved:
                    for i in 0..<half {
                        let a = head[2 * i], b = head[2 * i + 1]
                        head[2 * i] = a * cosines[i] - b * sines[i]
                        head[2 * i + 1] = b * cosines[i] + a * sines[i]
                    }
                }
            }
        }
    }
}

extension RotaryEmbedding {
    /// The RoPE of `config`'s standard attention: heads of `headDim`, its theta and rope parameters.
    init(config: ModelConfig) {
        self.init(headDim: config.headDim, theta: config.ropeTheta, parameters: config.rope,
                  maxPositionEmbeddings: config.maxPositionEmbeddings)
    }
}
