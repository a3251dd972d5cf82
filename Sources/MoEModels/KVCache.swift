import TensorMath

/// How keys and values are stored. float16 halves the KV cache (and the bytes attention
/// reads per step) for a rounding of ~5·10⁻⁴ relative per element; llama.cpp stores f16 by
/// default. The library default stays float32, the reference the fidelity tests compare with.
public enum KVPrecision: String, Sendable, CaseIterable {
    case f32
    case f16

    /// Bytes per stored element.
    public var byteCount: Int { self == .f32 ? 4 : 2 }
}

/// Keys and values of one sequence for every layer, after RoPE.
///
/// Layout per layer: `[capacity, kvHeads * headDim]`, row `p` holding position `p`. Capacity
/// grows by doubling up to `maxPositions`, so a short request does not reserve a full context.
public final class KVCache: @unchecked Sendable {
    /// Width of one row: `kvHeads * headDim`.
    public let rowWidth: Int
    /// Width of one value row: `rowWidth`, except for multi-head latent attention, whose "keys"
    /// are the compressed latents and "values" the rotary keys (`init(layerCount:keyWidth:valueWidth:...)`).
    public let valueRowWidth: Int
    /// The model's context limit.
    public let maxPositions: Int
    /// How elements are stored.
    public let precision: KVPrecision
    /// Positions filled so far (the same for every layer once a step finishes).
    public private(set) var length = 0
    /// `[layer]` buffers of `capacity * rowWidth` elements of `precision` (raw bytes).
    private var keys: [AlignedBuffer<UInt8>]
    private var values: [AlignedBuffer<UInt8>]
    public private(set) var capacity: Int

    /// The recurrent and conv state of the model's gated delta-net layers (Qwen3-Next), nil
    /// for models without them; those layers keep no keys or values here.
    public let linearState: LinearAttentionState?

    /// An empty cache for `layerCount` layers; with `linearState`, its linear layers hold no KV rows.
    public convenience init(layerCount: Int, kvHeads: Int, headDim: Int, maxPositions: Int, initialCapacity: Int = 64,
                            precision: KVPrecision = .f32, linearState: LinearAttentionState? = nil) {
        self.init(layerCount: layerCount, keyWidth: kvHeads * headDim, valueWidth: kvHeads * headDim,
                  maxPositions: maxPositions, initialCapacity: initialCapacity, precision: precision, linearState: linearState)
    }

    /// An empty cache whose key and value rows differ in width (multi-head latent attention:
    /// the latent `[kv_lora_rank]` as the key row, the rotary key `[qk_rope_head_dim]` as the value row).
    public init(layerCount: Int, keyWidth: Int, valueWidth: Int, maxPositions: Int, initialCapacity: Int = 64,
                precision: KVPrecision = .f32, linearState: LinearAttentionState? = nil) {
        rowWidth = keyWidth
        valueRowWidth = valueWidth
        self.maxPositions = maxPositions
        self.precision = precision
        self.linearState = linearState
        let rows = min(initialCapacity, maxPositions)
        capacity = rows
        let linear = Set(linearState?.config.layers ?? [])
        keys = (0..<layerCount).map { linear.contains($0) ? AlignedBuffer(count: 0) : AlignedBuffer(count: rows * keyWidth * precision.byteCount) }
        values = (0..<layerCount).map { linear.contains($0) ? AlignedBuffer(count: 0) : AlignedBuffer(count: rows * valueWidth * precision.byteCount) }
    }

    /// Bytes held by the buffers (and the linear layers' state, if any).
    public var byteCount: Int {
        keys.reduce(0) { $0 + $1.byteCount } + values.reduce(0) { $0 + $1.byteCount } + (linearState?.byteCount ?? 0)
    }

    /// Makes room for `newLength` positions.
    public func reserve(_ newLength: Int) {
        precondition(newLength <= maxPositions, "context of \(maxPositions) positions exceeded")
        guard newLength > capacity else { return }
        var newCapacity = max(capacity, 1)
        while newCapacity < newLength { newCapacity *= 2 }
        newCapacity = min(newCapacity, maxPositions)
        for layer in keys.indices where linearState?.config.layers.contains(layer) != true {
            keys[layer] = grown(keys[layer], to: newCapacity, width: rowWidth)
            values[layer] = grown(values[layer], to: newCapacity, width: valueRowWidth)
        }
        capacity = newCapacity
    }

    private func grown(_ old: AlignedBuffer<UInt8>, to rows: Int, width: Int) -> AlignedBuffer<UInt8> {
        let rowBytes = width * precision.byteCount
        let new = AlignedBuffer<UInt8>(count: rows * rowBytes)
        new.pointer.update(from: old.pointer, count: length * rowBytes)
        return new
    }

    /// Stores `key` (`[rowWidth]`) and `value` (`[valueRowWidth]`) at `position` of `layer`.
    public func store(layer: Int, position: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>) {
        precondition(position < capacity)
        switch precision {
        case .f32:
            (keyRows(layer) + position * rowWidth).update(from: key, count: rowWidth)
            (valueRows(layer) + position * valueRowWidth).update(from: value, count: valueRowWidth)
        case .f16:
            AttentionKernels.narrow(key, into: halfKeyRows(layer) + position * rowWidth, count: rowWidth)
            AttentionKernels.narrow(value, into: halfValueRows(layer) + position * valueRowWidth, count: valueRowWidth)
        }
    }

    /// Key rows of `layer`, `[capacity, rowWidth]` (float32 caches).
    public func keyRows(_ layer: Int) -> UnsafeMutablePointer<Float> {
        precondition(precision == .f32)
        return UnsafeMutableRawPointer(keys[layer].pointer).assumingMemoryBound(to: Float.self)
    }
    /// Value rows of `layer`, `[capacity, valueRowWidth]` (float32 caches).
    public func valueRows(_ layer: Int) -> UnsafeMutablePointer<Float> {
        precondition(precision == .f32)
        return UnsafeMutableRawPointer(values[layer].pointer).assumingMemoryBound(to: Float.self)
    }
    /// Key rows of `layer` as float16 bits, `[capacity, rowWidth]` (float16 caches).
    public func halfKeyRows(_ layer: Int) -> UnsafeMutablePointer<UInt16> {
        precondition(precision == .f16)
        return UnsafeMutableRawPointer(keys[layer].pointer).assumingMemoryBound(to: UInt16.self)
    }
    /// Value rows of `layer` as float16 bits, `[capacity, valueRowWidth]` (float16 caches).
    public func halfValueRows(_ layer: Int) -> UnsafeMutablePointer<UInt16> {
        precondition(precision == .f16)
        return UnsafeMutableRawPointer(values[layer].pointer).assumingMemoryBound(to: UInt16.self)
    }

    /// Records that `count` more positions were written to every layer.
    public func advance(by count: Int) {
        precondition(length + count <= capacity)
        length += count
    }

    /// Whether `truncate` may shorten this cache: not with a linear-attention state, which folds
    /// every position in (a prompt cache reusing a prefix must start such a sequence afresh).
    public var supportsTruncation: Bool { linearState == nil }

    /// Forgets everything after the first `newLength` positions (see `supportsTruncation`).
    public func truncate(to newLength: Int) {
        precondition(newLength <= length)
        // A recurrent state folds every position in and cannot be rewound.
        precondition(linearState == nil || newLength == length, "a sequence with linear-attention state cannot be truncated")
        length = newLength
    }
}
