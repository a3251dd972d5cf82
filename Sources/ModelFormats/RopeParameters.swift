import Foundation

/// How a model's rotary position embedding is parameterised beyond `rope_theta`, read as
/// transformers reads it (`convert_rope_params_to_dict` then `standardize_rope_params`):
/// `rope_scaling` (hub style) wins over `rope_parameters` (newer style), `rope_type` falls back
/// to `type`, and `partial_rotary_factor` may sit in either dictionary or at the top level.
public struct RopeParameters: Sendable, Codable, Equatable {
    /// The RoPE variants implemented.
    public enum Kind: String, Sendable, Codable, Equatable {
        /// Plain RoPE, `1 / theta^(2i/d)`.
        case `default`
        /// YaRN (arXiv 2309.00071) as transformers' `_compute_yarn_parameters`.
        case yarn
    }

    /// YaRN's keys (`rope_scaling` / `rope_parameters` members).
    public struct Yarn: Sendable, Codable, Equatable {
        /// Context extension factor; nil in the config means `max_position_embeddings / original`.
        public var factor: Double?
        /// The pretraining context (`original_max_position_embeddings`).
        public var originalMaxPositionEmbeddings: Int
        /// Extrapolation boundary in rotations (`beta_fast`, 32 when absent or 0).
        public var betaFast: Double
        /// Interpolation boundary in rotations (`beta_slow`, 1 when absent or 0).
        public var betaSlow: Double
        /// `mscale` (DeepSeek), nil when absent.
        public var mscale: Double?
        /// `mscale_all_dim` (DeepSeek), nil when absent.
        public var mscaleAllDim: Double?
        /// Round the correction range outwards to whole dimensions (`truncate`, default true).
        public var truncate: Bool
        /// Explicit scale of cos/sin (`attention_factor`); nil to derive it from factor and mscale.
        public var attentionFactor: Double?

        public init(factor: Double?, originalMaxPositionEmbeddings: Int, betaFast: Double = 32, betaSlow: Double = 1,
                    mscale: Double? = nil, mscaleAllDim: Double? = nil, truncate: Bool = true, attentionFactor: Double? = nil) {
            self.factor = factor
            self.originalMaxPositionEmbeddings = originalMaxPositionEmbeddings
            self.betaFast = betaFast
            self.betaSlow = betaSlow
            self.mscale = mscale
            self.mscaleAllDim = mscaleAllDim
            self.truncate = truncate
            self.attentionFactor = attentionFactor
        }
    }

    /// Which variant.
    public var kind: Kind
    /// Fraction of each head's dimensions that rotate (the first ones); 1 rotates all.
    public var partialRotaryFactor: Double
    /// YaRN's parameters when `kind == .yarn`.
    public var yarn: Yarn?

    public init(kind: Kind = .default, partialRotaryFactor: Double = 1, yarn: Yarn? = nil) {
        self.kind = kind
        self.partialRotaryFactor = partialRotaryFactor
        self.yarn = yarn
    }

    /// YaRN's `mscale` formula (`yarn_get_mscale`): `0.1 · mscale · ln(scale) + 1`, 1 for scale ≤ 1.
    public static func yarnMscale(_ scale: Double, _ mscale: Double = 1) -> Double {
        scale <= 1 ? 1 : 0.1 * mscale * Foundation.log(scale) + 1
    }

    /// The multiplier DeepSeek's multi-head latent attention applies to its softmax scale
    /// (transformers' `yarn_apply_mscale`): `m²` with `m = yarnMscale(factor, mscale_all_dim)`
    /// under YaRN with a non-zero `mscale_all_dim`, else 1. `maxPositionEmbeddings` resolves a
    /// null factor.
    public func softmaxScaleMultiplier(maxPositionEmbeddings: Int) -> Double {
        guard kind != .default, let yarn, let all = yarn.mscaleAllDim, all != 0 else { return 1 }
        let factor = yarn.factor ?? Double(maxPositionEmbeddings) / Double(yarn.originalMaxPositionEmbeddings)
        let m = Self.yarnMscale(factor, all)
        return m * m
    }
}

extension ConfigReader {
    /// The rope dictionary transformers uses: a non-empty `rope_scaling` object, else `rope_parameters`.
    var ropeDictionary: [String: JSONValue]? {
        if let scaling = json["rope_scaling"]?.objectValue, !scaling.isEmpty { return scaling }
        return json["rope_parameters"]?.objectValue
    }

    /// `partial_rotary_factor` from the rope dictionary or the top level, nil when neither has it
    /// (an architecture may then apply its own default, as GLM-4.5's 0.5).
    public func partialRotaryFactor() -> Double? {
        ropeDictionary?["partial_rotary_factor"]?.doubleValue ?? double("partial_rotary_factor")
    }

    /// Reads the rope variant and its parameters; refuses variants not implemented.
    func ropeParameters(maxPositionEmbeddings: Int) throws -> RopeParameters {
        let dictionary = ropeDictionary ?? [:]
        let kindName = (dictionary["rope_type"] ?? dictionary["type"])?.stringValue ?? "default"
        guard let kind = RopeParameters.Kind(rawValue: kindName) else {
            throw error("unsupported rope scaling '\(kindName)' (implemented: default, yarn)")
        }
        var parameters = RopeParameters(kind: kind, partialRotaryFactor: partialRotaryFactor() ?? 1)
        guard parameters.partialRotaryFactor > 0, parameters.partialRotaryFactor <= 1 else {
            throw error("partial_rotary_factor (\(parameters.partialRotaryFactor)) must be in (0, 1]")
        }
        if kind == .yarn {
            // transformers: a top-level original_max_position_embeddings wins over the dictionary's.
            let original = optionalInt("original_max_position_embeddings")
                ?? dictionary["original_max_position_embeddings"]?.intValue ?? maxPositionEmbeddings
            // `beta_fast or 32`: a 0 or null takes the default too.
            func nonZero(_ key: String) -> Double? { dictionary[key]?.doubleValue.flatMap { $0 == 0 ? nil : $0 } }
            let factor = dictionary["factor"]?.doubleValue
            guard original > 0, factor.map({ $0 > 0 }) ?? true else {
                throw error("yarn rope scaling needs a positive 'factor' and 'original_max_position_embeddings'")
            }
            parameters.yarn = RopeParameters.Yarn(
                factor: factor, originalMaxPositionEmbeddings: original,
                betaFast: nonZero("beta_fast") ?? 32, betaSlow: nonZero("beta_slow") ?? 1,
                mscale: dictionary["mscale"]?.doubleValue, mscaleAllDim: dictionary["mscale_all_dim"]?.doubleValue,
                truncate: dictionary["truncate"]?.boolValue ?? true,
                attentionFactor: dictionary["attention_factor"]?.doubleValue)
        }
        return parameters
    }
}
