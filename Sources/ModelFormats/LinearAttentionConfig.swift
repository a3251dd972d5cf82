/// The gated delta-net ("linear attention") layers of a hybrid model (Qwen3-Next): which layers
/// mix tokens with a recurrent state instead of softmax attention over a KV cache, and the
/// shapes of that state. Read from config.json by the architecture's file.
public struct LinearAttentionConfig: Sendable, Codable, Equatable {
    /// Indices of the layers whose token mixer is a gated delta-net (`layer_types` equal to
    /// `linear_attention`); the other layers use full attention.
    public var layers: [Int]
    /// Query/key heads (`linear_num_key_heads`).
    public var keyHeadCount: Int
    /// Value heads (`linear_num_value_heads`), a multiple of the key heads: each key head serves
    /// `valueHeadCount / keyHeadCount` consecutive value heads.
    public var valueHeadCount: Int
    /// Width of one query/key head (`linear_key_head_dim`).
    public var keyHeadDim: Int
    /// Width of one value head (`linear_value_head_dim`).
    public var valueHeadDim: Int
    /// Taps of the causal depthwise convolution over q, k and v (`linear_conv_kernel_dim`).
    public var convKernel: Int

    public init(layers: [Int], keyHeadCount: Int, valueHeadCount: Int, keyHeadDim: Int, valueHeadDim: Int, convKernel: Int) {
        self.layers = layers
        self.keyHeadCount = keyHeadCount
        self.valueHeadCount = valueHeadCount
        self.keyHeadDim = keyHeadDim
        self.valueHeadDim = valueHeadDim
        self.convKernel = convKernel
    }

    /// `keyHeadCount * keyHeadDim`: the width of q and of k.
    public var keyWidth: Int { keyHeadCount * keyHeadDim }
    /// `valueHeadCount * valueHeadDim`: the width of v, of the output gate z and of the output.
    public var valueWidth: Int { valueHeadCount * valueHeadDim }
    /// Channels of the convolution: q, k and v side by side.
    public var convChannels: Int { 2 * keyWidth + valueWidth }
    /// Floats of one layer's recurrent state: `[valueHeads, keyHeadDim, valueHeadDim]`.
    public var recurrentStateCount: Int { valueHeadCount * keyHeadDim * valueHeadDim }
    /// Floats of one layer's conv state: the last `convKernel - 1` inputs, `[convKernel - 1, convChannels]`.
    public var convStateCount: Int { (convKernel - 1) * convChannels }
    /// Bytes of one sequence's state over every linear layer (float32), whatever its length.
    public var stateBytesPerSequence: Int { layers.count * (recurrentStateCount + convStateCount) * MemoryLayout<Float>.stride }
}
