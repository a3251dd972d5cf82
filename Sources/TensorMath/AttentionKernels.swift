/// The two products of one attention head over a sequence's cached keys and values.
///
/// In decoding each is a handful of 64-wide dot products per head; through `cblas_sgemv` the
/// call overhead was larger than the arithmetic (14% of an eight-sequence decode step), so they
/// are plain SIMD loops here.
public enum AttentionKernels {
    /// `scores[j] = scale · (keys[j] · query)` for `j < count`; key `j` starts at
    /// `keys + j · keyStride` and has `dim` elements.
    public static func scores(query: UnsafePointer<Float>, keys: UnsafePointer<Float>, keyStride: Int, count: Int, dim: Int,
                              scale: Float, into scores: UnsafeMutablePointer<Float>) {
        scoreRows(Float32Rows.self, query: query, keys: keys, keyStride: keyStride, count: count, dim: dim, scale: scale, into: scores)
    }

    /// `scores` over float16 keys (bits).
    public static func scores(query: UnsafePointer<Float>, halfKeys keys: UnsafePointer<UInt16>, keyStride: Int, count: Int, dim: Int,
                              scale: Float, into scores: UnsafeMutablePointer<Float>) {
        scoreRows(Float16Rows.self, query: query, keys: keys, keyStride: keyStride, count: count, dim: dim, scale: scale, into: scores)
    }

    /// `context[d] = Σ_j weights[j] · values[j · valueStride + d]` for `d < dim`.
    public static func weightedSum(_ weights: UnsafePointer<Float>, values: UnsafePointer<Float>, valueStride: Int, count: Int,
                                   dim: Int, into context: UnsafeMutablePointer<Float>) {
        sumRows(Float32Rows.self, weights, values: values, valueStride: valueStride, count: count, dim: dim, into: context)
    }

    /// `weightedSum` over float16 values (bits).
    public static func weightedSum(_ weights: UnsafePointer<Float>, halfValues values: UnsafePointer<UInt16>, valueStride: Int,
                                   count: Int, dim: Int, into context: UnsafeMutablePointer<Float>) {
        sumRows(Float16Rows.self, weights, values: values, valueStride: valueStride, count: count, dim: dim, into: context)
    }

    @inline(__always)
    private static func scoreRows<Rows: StoredRows>(_: Rows.Type, query: UnsafePointer<Float>, keys: UnsafePointer<Rows.Element>,
                                                 keyStride: Int, count: Int, dim: Int, scale: Float,
                                                 into scores: UnsafeMutablePointer<Float>) {
        let chunks = dim / 8
        let q = UnsafeRawPointer(query)
        for j in 0..<count {
            let key = keys + j * keyStride
            var acc = SIMD8<Float>()
            for c in 0..<chunks {
                acc.addProduct(Rows.eight(key + c * 8), q.loadUnaligned(fromByteOffset: c * 32, as: SIMD8<Float>.self))
            }
            var sum = acc.sum()
            for d in (chunks * 8)..<dim { sum += Rows.one(key[d]) * query[d] }
            scores[j] = scale * sum
        }
    }

    @inline(__always)
    private static func sumRows<Rows: StoredRows>(_: Rows.Type, _ weights: UnsafePointer<Float>, values: UnsafePointer<Rows.Element>,
                                                      valueStride: Int, count: Int, dim: Int, into context: UnsafeMutablePointer<Float>) {
        context.update(repeating: 0, count: dim)
        let chunks = dim / 8
        let out = UnsafeMutableRawPointer(context)
        for j in 0..<count {
            let value = values + j * valueStride
            let p = SIMD8<Float>(repeating: weights[j])
            for c in 0..<chunks {
                var acc = out.loadUnaligned(fromByteOffset: c * 32, as: SIMD8<Float>.self)
                acc.addProduct(Rows.eight(value + c * 8), p)
                out.storeBytes(of: acc, toByteOffset: c * 32, as: SIMD8<Float>.self)
            }
            for d in (chunks * 8)..<dim { context[d] += weights[j] * Rows.one(value[d]) }
        }
    }

    /// Eight halves at `pointer` as floats (`vcvtph2ps`; exact).
    @inline(__always)
    public static func widen(_ pointer: UnsafeRawPointer) -> SIMD8<Float> {
        SIMD8<Float>(pointer.loadUnaligned(as: SIMD8<Float16>.self))
    }

    /// `count` floats as half bit patterns, rounded to nearest even (`vcvtps2ph`).
    public static func narrow(_ source: UnsafePointer<Float>, into destination: UnsafeMutablePointer<UInt16>, count: Int) {
        let chunks = count / 8
        let from = UnsafeRawPointer(source), to = UnsafeMutableRawPointer(destination)
        for c in 0..<chunks {
            to.storeBytes(of: SIMD8<Float16>(from.loadUnaligned(fromByteOffset: c * 32, as: SIMD8<Float>.self)),
                          toByteOffset: c * 16, as: SIMD8<Float16>.self)
        }
        for i in (chunks * 8)..<count { destination[i] = Float16(source[i]).bitPattern }
    }
}

/// How a KV cache row's elements read as floats.
private protocol StoredRows {
    associatedtype Element
    /// Eight elements at `pointer`.
    static func eight(_ pointer: UnsafePointer<Element>) -> SIMD8<Float>
    /// One element.
    static func one(_ element: Element) -> Float
}

private enum Float32Rows: StoredRows {
    @inline(__always) static func eight(_ pointer: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(pointer).loadUnaligned(as: SIMD8<Float>.self)
    }
    @inline(__always) static func one(_ element: Float) -> Float { element }
}

/// float16 bit patterns. Loading `SIMD8<Float16>` directly matters: converting a
/// `SIMD8<UInt16>` bit-cast to halves assembled the vector lane by lane and made f16 attention
/// slower than f32.
private enum Float16Rows: StoredRows {
    @inline(__always) static func eight(_ pointer: UnsafePointer<UInt16>) -> SIMD8<Float> { AttentionKernels.widen(pointer) }
    @inline(__always) static func one(_ element: UInt16) -> Float { Float(Float16(bitPattern: element)) }
}
