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
        let chunks = dim / 8
        let q = UnsafeRawPointer(query)
        for j in 0..<count {
            let key = keys + j * keyStride
            let k = UnsafeRawPointer(key)
            var acc = SIMD8<Float>()
            for c in 0..<chunks {
                acc.addProduct(k.loadUnaligned(fromByteOffset: c * 32, as: SIMD8<Float>.self),
                               q.loadUnaligned(fromByteOffset: c * 32, as: SIMD8<Float>.self))
            }
            var sum = acc.sum()
            for d in (chunks * 8)..<dim { sum += key[d] * query[d] }
            scores[j] = scale * sum
        }
    }

    /// `context[d] = Σ_j weights[j] · values[j · valueStride + d]` for `d < dim`.
    public static func weightedSum(_ weights: UnsafePointer<Float>, values: UnsafePointer<Float>, valueStride: Int, count: Int,
                                   dim: Int, into context: UnsafeMutablePointer<Float>) {
        context.update(repeating: 0, count: dim)
        let chunks = dim / 8
        let out = UnsafeMutableRawPointer(context)
        for j in 0..<count {
            let value = values + j * valueStride
            let v = UnsafeRawPointer(value)
            let p = SIMD8<Float>(repeating: weights[j])
            for c in 0..<chunks {
                var acc = out.loadUnaligned(fromByteOffset: c * 32, as: SIMD8<Float>.self)
                acc.addProduct(v.loadUnaligned(fromByteOffset: c * 32, as: SIMD8<Float>.self), p)
                out.storeBytes(of: acc, toByteOffset: c * 32, as: SIMD8<Float>.self)
            }
            for d in (chunks * 8)..<dim { context[d] += weights[j] * value[d] }
        }
    }

    /// `scores` over float16 keys (bits), eight at a time with `vcvtph2ps`. (Loading
    /// `SIMD8<Float16>` directly matters: converting a `SIMD8<UInt16>` bit-cast to halves
    /// assembled the vector lane by lane and made f16 attention slower than f32.)
    public static func scores(query: UnsafePointer<Float>, halfKeys keys: UnsafePointer<UInt16>, keyStride: Int, count: Int, dim: Int,
                              scale: Float, into scores: UnsafeMutablePointer<Float>) {
        let chunks = dim / 8
        let q = UnsafeRawPointer(query)
        for j in 0..<count {
            let key = keys + j * keyStride
            let k = UnsafeRawPointer(key)
            var acc = SIMD8<Float>()
            for c in 0..<chunks {
                acc.addProduct(widen(k + c * 16), q.loadUnaligned(fromByteOffset: c * 32, as: SIMD8<Float>.self))
            }
            var sum = acc.sum()
            for d in (chunks * 8)..<dim { sum += Float(Float16(bitPattern: key[d])) * query[d] }
            scores[j] = scale * sum
        }
    }

    /// `weightedSum` over float16 values (bits).
    public static func weightedSum(_ weights: UnsafePointer<Float>, halfValues values: UnsafePointer<UInt16>, valueStride: Int,
                                   count: Int, dim: Int, into context: UnsafeMutablePointer<Float>) {
        context.update(repeating: 0, count: dim)
        let chunks = dim / 8
        let out = UnsafeMutableRawPointer(context)
        for j in 0..<count {
            let value = values + j * valueStride
            let v = UnsafeRawPointer(value)
            let p = SIMD8<Float>(repeating: weights[j])
            for c in 0..<chunks {
                var acc = out.loadUnaligned(fromByteOffset: c * 32, as: SIMD8<Float>.self)
                acc.addProduct(widen(v + c * 16), p)
                out.storeBytes(of: acc, toByteOffset: c * 32, as: SIMD8<Float>.self)
            }
            for d in (chunks * 8)..<dim { context[d] += weights[j] * Float(Float16(bitPattern: value[d])) }
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
