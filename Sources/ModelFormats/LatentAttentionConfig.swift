/// The dimensions of DeepSeek's multi-head latent attention (MLA): queries optionally through a
/// low-rank bottleneck, keys and values from one shared compressed latent per token plus a
/// small rotary key shared by every head.
public struct LatentAttentionConfig: Sendable, Codable, Equatable {
    /// Rank of the query bottleneck (`q_lora_rank`), nil for a direct `q_proj` (V2-Lite).
    public var queryRank: Int?
    /// Width of the compressed key/value latent (`kv_lora_rank`).
    public var latentRank: Int
    /// Per-head query/key dimensions without position (`qk_nope_head_dim`).
    public var noPositionDim: Int
    /// Per-head query/key dimensions with RoPE (`qk_rope_head_dim`), shared by all heads on the key side.
    public var ropeDim: Int
    /// Per-head value width (`v_head_dim`).
    public var valueDim: Int
    /// RoPE over pairs (2i, 2i+1) (`rope_interleave`; DeepSeek-V2 always).
    public var interleavedRope: Bool

    public init(queryRank: Int?, latentRank: Int, noPositionDim: Int, ropeDim: Int, valueDim: Int, interleavedRope: Bool) {
        self.queryRank = queryRank
        self.latentRank = latentRank
        self.noPositionDim = noPositionDim
        self.ropeDim = ropeDim
        self.valueDim = valueDim
        self.interleavedRope = interleavedRope
    }

    /// Query/key head width: `noPositionDim + ropeDim`.
    public var queryHeadDim: Int { noPositionDim + ropeDim }
    /// Values one token keeps in the KV cache per layer: the latent and the rotary key.
    public var cachedValuesPerToken: Int { latentRank + ropeDim }
}
