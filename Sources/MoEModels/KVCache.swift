import Foundation
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
///
/// A sliding-window layer (`windows[layer] = w`) keeps at most `windowRows(w)` = 2w rows: row
/// `p - firstPosition(layer)` holds position `p`, and when the rows are full the newest w - 1
/// are moved to the front, so a layer's memory stays bounded by its window however long the
/// sequence (one move of w - 1 rows per w + 1 tokens). A query at position p must be run right
/// after position p is stored (its keys p-w+1...p are then the layer's last w rows), which is
/// how `AttentionLayer` runs.
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
    /// With `.f16`: attend as llama.cpp's CPU flash attention does (`GGMLFlashAttention`, f16
    /// query and f16 accumulator), for comparisons with llama.cpp; off by default.
    public var llamaCppFlashAttention = false
    /// Rotary angles as llama.cpp's CPU RoPE computes them (`RotaryEmbedding.apply(llamaCppAngles:)`),
    /// for comparisons with llama.cpp; off by default.
    public var llamaCppRotaryAngles = false
    /// This sequence's id in routing reports (`RoutingObserver.willRunSequences`): unique in the
    /// process, a copy (a prompt-cache hit, an `n` > 1 fork) gets its own.
    public let sequenceID: Int = KVCache.nextSequenceID()
    private static let idLock = NSLock()
    nonisolated(unsafe) private static var lastSequenceID = 0
    private static func nextSequenceID() -> Int {
        idLock.lock(); defer { idLock.unlock() }
        lastSequenceID += 1
        return lastSequenceID
    }
    /// Positions filled so far (the same for every layer once a step finishes).
    public private(set) var length = 0
    /// `[layer]` buffers of `capacity * rowWidth` elements of `precision` (raw bytes).
    private var keys: [AlignedBuffer<UInt8>]
    private var values: [AlignedBuffer<UInt8>]
    public private(set) var capacity: Int
    /// Per layer: the sliding window bounding its rows, nil for a layer that keeps every position.
    public let windows: [Int?]
    /// Per layer: rows its buffers hold (`capacity`, or at most `windowRows` for a window).
    private var layerRows: [Int]
    /// Per layer: the position row 0 holds (0 unless a window moved rows).
    private var firstPositions: [Int]

    /// The recurrent and conv state of the model's gated delta-net layers (Qwen3-Next), nil
    /// for models without them; those layers keep no keys or values here.
    public let linearState: LinearAttentionState?

    /// Rows a layer with sliding window `window` keeps at most (`maxPositions` permitting).
    public static func windowRows(_ window: Int) -> Int { 2 * window }

    /// An empty cache for `layerCount` layers; `windows[layer]` bounds a sliding-window layer
    /// (empty: no layer is bounded); with `linearState`, its linear layers hold no KV rows.
    public convenience init(layerCount: Int, kvHeads: Int, headDim: Int, maxPositions: Int, initialCapacity: Int = 64,
                            precision: KVPrecision = .f32, windows: [Int?] = [], linearState: LinearAttentionState? = nil) {
        self.init(layerCount: layerCount, keyWidth: kvHeads * headDim, valueWidth: kvHeads * headDim,
                  maxPositions: maxPositions, initialCapacity: initialCapacity, precision: precision, windows: windows,
                  linearState: linearState)
    }

    /// An empty cache whose key and value rows differ in width (multi-head latent attention:
    /// the latent `[kv_lora_rank]` as the key row, the rotary key `[qk_rope_head_dim]` as the value row).
    public init(layerCount: Int, keyWidth: Int, valueWidth: Int, maxPositions: Int, initialCapacity: Int = 64,
                precision: KVPrecision = .f32, windows: [Int?] = [], linearState: LinearAttentionState? = nil) {
        rowWidth = keyWidth
        valueRowWidth = valueWidth
        self.maxPositions = maxPositions
        self.precision = precision
        self.linearState = linearState
        capacity = min(initialCapacity, maxPositions)
        let windows = windows.isEmpty ? [Int?](repeating: nil, count: layerCount) : windows
        precondition(windows.count == layerCount, "one window (or nil) per layer")
        self.windows = windows
        let capacity = capacity
        let linear = Set(linearState?.config.layers ?? [])
        layerRows = (0..<layerCount).map { layer in
            linear.contains(layer) ? 0 : windows[layer].map { min(capacity, Self.windowRows($0), maxPositions) } ?? capacity
        }
        firstPositions = [Int](repeating: 0, count: layerCount)
        keys = layerRows.map { AlignedBuffer(count: $0 * keyWidth * precision.byteCount) }
        values = layerRows.map { AlignedBuffer(count: $0 * valueWidth * precision.byteCount) }
    }

    /// Bytes held by the buffers (and the linear layers' state, if any).
    public var byteCount: Int {
        keys.reduce(0) { $0 + $1.byteCount } + values.reduce(0) { $0 + $1.byteCount } + (linearState?.byteCount ?? 0)
    }

    /// The position row 0 of `layer` holds: keys of `layer` for position p are at row
    /// `p - firstPosition(layer)`.
    public func firstPosition(_ layer: Int) -> Int { firstPositions[layer] }

    /// Makes room for `newLength` positions.
    public func reserve(_ newLength: Int) {
        precondition(newLength <= maxPositions, "context of \(maxPositions) positions exceeded")
        guard newLength > capacity else { return }
        var newCapacity = max(capacity, 1)
        while newCapacity < newLength { newCapacity *= 2 }
        newCapacity = min(newCapacity, maxPositions)
        for layer in keys.indices where linearState?.config.layers.contains(layer) != true {
            let rows = windows[layer].map { min(newCapacity, Self.windowRows($0)) } ?? newCapacity
            guard rows > layerRows[layer] else { continue }
            let held = length - firstPositions[layer]
            keys[layer] = grown(keys[layer], to: rows, held: held, width: rowWidth)
            values[layer] = grown(values[layer], to: rows, held: held, width: valueRowWidth)
            layerRows[layer] = rows
        }
        capacity = newCapacity
    }

    private func grown(_ old: AlignedBuffer<UInt8>, to rows: Int, held: Int, width: Int) -> AlignedBuffer<UInt8> {
        let rowBytes = width * precision.byteCount
        let new = AlignedBuffer<UInt8>(count: rows * rowBytes)
        new.pointer.update(from: old.pointer, count: held * rowBytes)
        return new
    }

    /// Stores `key` (`[rowWidth]`) and `value` (`[valueRowWidth]`) at `position` of `layer`. A
    /// sliding-window layer whose rows are full first moves its newest `window - 1` rows to the
    /// front (positions before `position - window + 1` are never read again).
    public func store(layer: Int, position: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>) {
        precondition(position < capacity)
        var row = position - firstPositions[layer]
        if row >= layerRows[layer], let window = windows[layer] {
            let kept = window - 1
            let keyRowBytes = rowWidth * precision.byteCount, valueRowBytes = valueRowWidth * precision.byteCount
            let from = row - kept
            precondition(from >= 0 && row == layerRows[layer], "sliding-window rows are stored in order")
            keys[layer].pointer.update(from: keys[layer].pointer + from * keyRowBytes, count: kept * keyRowBytes)
            values[layer].pointer.update(from: values[layer].pointer + from * valueRowBytes, count: kept * valueRowBytes)
            firstPositions[layer] += from
            row = kept
        }
        precondition(row >= 0 && row < layerRows[layer])
        switch precision {
        case .f32:
            (keyRows(layer) + row * rowWidth).update(from: key, count: rowWidth)
            (valueRows(layer) + row * valueRowWidth).update(from: value, count: valueRowWidth)
        case .f16:
            AttentionKernels.narrow(key, into: halfKeyRows(layer) + row * rowWidth, count: rowWidth)
            AttentionKernels.narrow(value, into: halfValueRows(layer) + row * valueRowWidth, count: valueRowWidth)
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

    /// Whether `truncate` may shorten this cache at all: not with a linear-attention state, which
    /// folds every position in (a prompt cache reusing a prefix must start such a sequence afresh).
    public var supportsTruncation: Bool { linearState == nil }

    /// Whether `truncate(to: newLength)` keeps what the next position needs: a sliding-window
    /// layer that has moved rows can go back only as far as the keys it still holds allow, and a
    /// linear-attention state cannot go back at all.
    public func canTruncate(to newLength: Int) -> Bool {
        newLength <= length && (supportsTruncation || newLength == length) && windows.indices.allSatisfy { layer in
            guard let window = windows[layer] else { return true }
            return newLength - window + 1 >= firstPositions[layer] || firstPositions[layer] == 0
        }
    }

    /// Forgets everything after the first `newLength` positions (see `canTruncate`).
    public func truncate(to newLength: Int) {
        precondition(canTruncate(to: newLength), "truncating below what a sliding-window layer or a linear-attention state still holds")
        length = newLength
    }

    /// Goes back to position `newLength` of a cache with a linear-attention state, given that
    /// state as it was after `newLength` positions (a prompt-cache snapshot): the attention
    /// layers keep their first `newLength` rows, the linear layers take the snapshot's state.
    public func rewind(to newLength: Int, linearState snapshot: LinearAttentionState) {
        precondition(newLength <= length && windows.allSatisfy { $0 == nil }, "rewinding past the cache's length or a sliding window")
        guard let linearState else { preconditionFailure("rewinding a cache without a linear-attention state") }
        linearState.restore(from: snapshot)
        length = newLength
    }

    /// A new cache holding this one's first `newLength` positions (`canTruncate(to: newLength)`
    /// must hold): each layer's rows up to `newLength` are copied, a sliding-window layer's with
    /// its first position, the linear-attention state whole. Reading the copy gives exactly what
    /// reading this cache truncated to `newLength` would (a prompt-cache hit or an `n` > 1 fork).
    public func copy(length newLength: Int) -> KVCache {
        precondition(canTruncate(to: newLength), "copying a prefix a sliding-window layer or a linear-attention state no longer holds")
        let copy = KVCache(layerCount: keys.count, keyWidth: rowWidth, valueWidth: valueRowWidth, maxPositions: maxPositions,
                           initialCapacity: max(capacity, 1), precision: precision, windows: windows, linearState: linearState?.copy())
        copy.llamaCppFlashAttention = llamaCppFlashAttention
        let keyRowBytes = rowWidth * precision.byteCount, valueRowBytes = valueRowWidth * precision.byteCount
        for layer in keys.indices where layerRows[layer] > 0 {
            let held = max(0, newLength - firstPositions[layer])
            precondition(copy.layerRows[layer] >= held)
            copy.keys[layer].pointer.update(from: keys[layer].pointer, count: held * keyRowBytes)
            copy.values[layer].pointer.update(from: values[layer].pointer, count: held * valueRowBytes)
            copy.firstPositions[layer] = firstPositions[layer]
        }
        copy.length = newLength
        return copy
    }
}
