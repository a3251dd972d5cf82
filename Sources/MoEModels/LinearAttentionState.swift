import ModelFormats
import TensorMath

/// One sequence's state in the gated delta-net layers of a hybrid model (Qwen3-Next): per
/// linear-attention layer, the recurrent state `[valueHeads, keyHeadDim, valueHeadDim]` and the
/// conv state, the last `convKernel - 1` convolution inputs `[convKernel - 1, convChannels]`.
/// Fixed size whatever the sequence's length; it lives in the sequence's `KVCache` (its
/// `linearState`), so it is made, counted and freed with it. Both start at zero, which is the
/// zero padding transformers puts before a prompt.
public final class LinearAttentionState: @unchecked Sendable {
    /// The shapes.
    public let config: LinearAttentionConfig
    /// `[layer]`: slot of each linear layer in `recurrent` / `conv`, -1 for other layers.
    private let slots: [Int]
    private let recurrent: [AlignedBuffer<Float>]
    private let conv: [AlignedBuffer<Float>]

    /// Zero state for `config`'s linear layers of a model with `layerCount` layers.
    public init(config: LinearAttentionConfig, layerCount: Int) {
        self.config = config
        var slots = [Int](repeating: -1, count: layerCount)
        for (slot, layer) in config.layers.enumerated() { slots[layer] = slot }
        self.slots = slots
        recurrent = config.layers.map { _ in AlignedBuffer(count: config.recurrentStateCount) }
        conv = config.layers.map { _ in AlignedBuffer(count: max(config.convStateCount, 1)) }
    }

    /// Layer `layer`'s recurrent state, `[valueHeads, keyHeadDim, valueHeadDim]`.
    public func recurrentState(layer: Int) -> UnsafeMutablePointer<Float> { recurrent[slots[layer]].pointer }

    /// Layer `layer`'s conv state: the last `convKernel - 1` inputs, oldest first, `[convKernel - 1, convChannels]`.
    public func convState(layer: Int) -> UnsafeMutablePointer<Float> { conv[slots[layer]].pointer }

    /// Bytes held (what `LinearAttentionConfig.stateBytesPerSequence` promises the memory plan).
    public var byteCount: Int { recurrent.reduce(0) { $0 + $1.byteCount } + config.layers.count * config.convStateCount * MemoryLayout<Float>.stride }

    /// An independent copy of this state (a prompt-cache snapshot, or one of `n` choices
    /// forked from a shared prefill): the state folds in every position, so it is copied whole.
    public func copy() -> LinearAttentionState {
        let copy = LinearAttentionState(config: config, layerCount: slots.count)
        for (source, target) in zip(recurrent, copy.recurrent) { target.pointer.update(from: source.pointer, count: source.count) }
        for (source, target) in zip(conv, copy.conv) { target.pointer.update(from: source.pointer, count: source.count) }
        return copy
    }

    /// Overwrites this state with `snapshot` (a copy of the same model's state taken earlier):
    /// a prompt-cache hit going back to the position the snapshot was taken at.
    public func restore(from snapshot: LinearAttentionState) {
        precondition(snapshot.slots == slots && snapshot.config.recurrentStateCount == config.recurrentStateCount,
                     "restoring a linear-attention state of another model")
        for (source, target) in zip(snapshot.recurrent, recurrent) { target.pointer.update(from: source.pointer, count: source.count) }
        for (source, target) in zip(snapshot.conv, conv) { target.pointer.update(from: source.pointer, count: source.count) }
    }
}
