import TensorMath

/// Keys and values of one sequence for every layer, after RoPE, in float32.
///
/// Layout per layer: `[capacity, kvHeads * headDim]`, row `p` holding position `p`. Capacity
/// grows by doubling up to `maxPositions`, so a short request does not reserve a full context.
public final class KVCache: @unchecked Sendable {
    /// Width of one row: `kvHeads * headDim`.
    public let rowWidth: Int
    /// The model's context limit.
    public let maxPositions: Int
    /// Positions filled so far (the same for every layer once a step finishes).
    public private(set) var length = 0
    private var keys: [AlignedBuffer<Float>]
    private var values: [AlignedBuffer<Float>]

    /// An empty cache for `layerCount` layers.
    public init(layerCount: Int, kvHeads: Int, headDim: Int, maxPositions: Int, initialCapacity: Int = 64) {
        rowWidth = kvHeads * headDim
        self.maxPositions = maxPositions
        let capacity = min(initialCapacity, maxPositions)
        keys = (0..<layerCount).map { _ in AlignedBuffer(count: capacity * kvHeads * headDim) }
        values = (0..<layerCount).map { _ in AlignedBuffer(count: capacity * kvHeads * headDim) }
    }

    /// Rows the buffers can hold before they grow.
    public var capacity: Int { keys.first.map { $0.count / rowWidth } ?? 0 }

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
    }

    private func grown(_ old: AlignedBuffer<Float>, to rows: Int) -> AlignedBuffer<Float> {
        let new = AlignedBuffer<Float>(count: rows * rowWidth)
        new.pointer.update(from: old.pointer, count: length * rowWidth)
        return new
    }

    /// Key rows of `layer`, `[capacity, rowWidth]`.
    public func keyRows(_ layer: Int) -> UnsafeMutablePointer<Float> { keys[layer].pointer }
    /// Value rows of `layer`, `[capacity, rowWidth]`.
    public func valueRows(_ layer: Int) -> UnsafeMutablePointer<Float> { values[layer].pointer }

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
