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
    /// The model's context limit.
    public let maxPositions: Int
    /// How elements are stored.
    public let precision: KVPrecision
    /// With `.f16`: attend as llama.cpp's CPU flash attention does (`GGMLFlashAttention`, f16
    /// query and f16 accumulator), for comparisons with llama.cpp; off by default.
    public var llamaCppFlashAttention = false
    /// Positions filled so far (the same for every layer once a step finishes).
    public private(set) var length = 0
    /// `[layer]` buffers of `capacity * rowWidth` elements of `precision` (raw bytes).
    private var keys: [AlignedBuffer<UInt8>]
    private var values: [AlignedBuffer<UInt8>]
    public private(set) var capacity: Int

    /// An empty cache for `layerCount` layers.
    public init(layerCount: Int, kvHeads: Int, headDim: Int, maxPositions: Int, initialCapacity: Int = 64,
                precision: KVPrecision = .f32) {
        rowWidth = kvHeads * headDim
        self.maxPositions = maxPositions
        self.precision = precision
        capacity = min(initialCapacity, maxPositions)
        let bytes = capacity * kvHeads * headDim * precision.byteCount
        keys = (0..<layerCount).map { _ in AlignedBuffer(count: bytes) }
        values = (0..<layerCount).map { _ in AlignedBuffer(count: bytes) }
    }

    /// Bytes held by the buffers.
    public var byteCount: Int { (keys.first?.byteCount ?? 0) * keys.count * 2 }

    /// Makes room for `newLength` positions.
    public func reserve(_ newLength: Int) {
        precondition(newLength <= maxPositions, "context of \(maxPositions) positions exceeded")
        guard newLength > capacity else { return }
        var newCapacity = max(capacity, 1)
        while newCapacity < newLength { newCapacity *= 2 }
        newCapacity = min(newCapacity, maxPositions)
        for layer in keys.indices {
            keys[layer] = grown(keys[layer], to: newCapacity)
            values[layer] = grown(values[layer], to: newCapacity)
        }
        capacity = newCapacity
    }

    private func grown(_ old: AlignedBuffer<UInt8>, to rows: Int) -> AlignedBuffer<UInt8> {
        let rowBytes = rowWidth * precision.byteCount
        let new = AlignedBuffer<UInt8>(count: rows * rowBytes)
        new.pointer.update(from: old.pointer, count: length * rowBytes)
        return new
    }

    /// Stores `key` and `value` (`[rowWidth]` floats each) at `position` of `layer`.
    public func store(layer: Int, position: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>) {
        precondition(position < capacity)
        switch precision {
        case .f32:
            (keyRows(layer) + position * rowWidth).update(from: key, count: rowWidth)
            (valueRows(layer) + position * rowWidth).update(from: value, count: rowWidth)
        case .f16:
            AttentionKernels.narrow(key, into: halfKeyRows(layer) + position * rowWidth, count: rowWidth)
            AttentionKernels.narrow(value, into: halfValueRows(layer) + position * rowWidth, count: rowWidth)
        }
    }

    /// Key rows of `layer`, `[capacity, rowWidth]` (float32 caches).
    public func keyRows(_ layer: Int) -> UnsafeMutablePointer<Float> {
        precondition(precision == .f32)
        return UnsafeMutableRawPointer(keys[layer].pointer).assumingMemoryBound(to: Float.self)
    }
    /// Value rows of `layer`, `[capacity, rowWidth]` (float32 caches).
    public func valueRows(_ layer: Int) -> UnsafeMutablePointer<Float> {
        precondition(precision == .f32)
        return UnsafeMutableRawPointer(values[layer].pointer).assumingMemoryBound(to: Float.self)
    }
    /// Key rows of `layer` as float16 bits, `[capacity, rowWidth]` (float16 caches).
    public func halfKeyRows(_ layer: Int) -> UnsafeMutablePointer<UInt16> {
        precondition(precision == .f16)
        return UnsafeMutableRawPointer(keys[layer].pointer).assumingMemoryBound(to: UInt16.self)
    }
    /// Value rows of `layer` as float16 bits, `[capacity, rowWidth]` (float16 caches).
    public func halfValueRows(_ layer: Int) -> UnsafeMutablePointer<UInt16> {
        precondition(precision == .f16)
        return UnsafeMutableRawPointer(values[layer].pointer).assumingMemoryBound(to: UInt16.self)
    }

    /// Records that `count` more positions were written to every layer.
    public func advance(by count: Int) {
        precondition(length + count <= capacity)
        length += count
    }

    /// Forgets everything after the first `newLength` positions.
    public func truncate(to newLength: Int) {
        precondition(newLength <= length)
        length = newLength
    }
}
