/// Encoders for the ggml block types that low-bit expert copies use (`pack --low-bit-copies`,
/// docs/LOSSY.md): Q2_K for matrices whose input width 256 divides, Q4_0 for those only 32
/// divides. The output is the blocks `GGMLDequantize` decodes and `GGMLKernels` /
/// `IntegerDotKernels` multiply, so nothing new is needed to run them.
///
/// Q2_K here is a simple encoder written for this project (not llama.cpp's iterative search):
/// per group of 16 a range [min(x, 0), max(x)] refined by one least-squares fit, then the 16
/// group scales and mins rounded to 4 bits against the super-block's float16 `d` and `dmin`.
public enum GGMLQuantize {
    /// Encodes one row `x[cols]` (cols a multiple of 256) as Q2_K blocks into `out`
    /// (`cols / 256 * 84` bytes: scales[16], qs[64], d, dmin per block).
    public static func q2K(_ x: UnsafePointer<Float>, cols: Int, into out: UnsafeMutableRawPointer) {
        precondition(cols % 256 == 0, "Q2_K needs a multiple of 256 weights, got \(cols)")
        for b in 0..<(cols / 256) {
            q2KBlock(x + 256 * b, into: out + 84 * b)
        }
    }

    /// Encodes one row `x[cols]` (cols a multiple of 32) as Q4_0 blocks into `out`
    /// (`cols / 32 * 18` bytes: float16 d, then 16 bytes: element j low nibble, j+16 high).
    public static func q4_0(_ x: UnsafePointer<Float>, cols: Int, into out: UnsafeMutableRawPointer) {
        precondition(cols % 32 == 0, "Q4_0 needs a multiple of 32 weights, got \(cols)")
        for b in 0..<(cols / 32) {
            let src = x + 32 * b, dst = out + 18 * b
            // As ggml: the value of largest magnitude maps to −8, so its sign uses the wider side.
            var extreme: Float = 0
            for i in 0..<32 where abs(src[i]) > abs(extreme) { extreme = src[i] }
            let d = Float16(extreme / -8)
            let id: Float = Float(d) != 0 ? 1 / Float(d) : 0
            dst.storeBytes(of: d.bitPattern, toByteOffset: 0, as: UInt16.self)
            for j in 0..<16 {
                let lo = UInt8(min(15, max(0, Int((src[j] * id + 8.5).rounded(.down)))))
                let hi = UInt8(min(15, max(0, Int((src[j + 16] * id + 8.5).rounded(.down)))))
                dst.storeBytes(of: lo | (hi << 4), toByteOffset: 2 + j, as: UInt8.self)
            }
        }
    }

    /// One Q2_K super-block of 256 weights: w = d·sc·q − dmin·m with 2-bit q, 4-bit sc and m.
    static func q2KBlock(_ x: UnsafePointer<Float>, into out: UnsafeMutableRawPointer) {
        var scales = [Float](repeating: 0, count: 16), mins = [Float](repeating: 0, count: 16)
        for g in 0..<16 {
            let group = UnsafeBufferPointer(start: x + 16 * g, count: 16)
            (scales[g], mins[g]) = fitGroup(group)
        }
        let d = Float16((scales.max() ?? 0) / 15), dmin = Float16((mins.max() ?? 0) / 15)
        let df = Float(d), dminf = Float(dmin)
        var qs = [UInt8](repeating: 0, count: 64)
        for g in 0..<16 {
            let sc = df > 0 ? UInt8(min(15, max(0, (scales[g] / df).rounded()))) : 0
            let m = dminf > 0 ? UInt8(min(15, max(0, (mins[g] / dminf).rounded()))) : 0
            out.storeBytes(of: sc | (m << 4), toByteOffset: g, as: UInt8.self)
            let step = df * Float(sc), offset = dminf * Float(m)
            for i in 0..<16 {
                let e = 16 * g + i
                let q = step > 0 ? UInt8(min(3, max(0, ((x[e] + offset) / step).rounded()))) : 0
                // Element e: byte (e/128)*32 + e%32, bits 2·((e%128)/32) (ggml's order).
                qs[(e / 128) * 32 + e % 32] |= q << UInt8(2 * ((e % 128) / 32))
            }
        }
        for i in 0..<64 { out.storeBytes(of: qs[i], toByteOffset: 16 + i, as: UInt8.self) }
        out.storeBytes(of: d.bitPattern, toByteOffset: 80, as: UInt16.self)
        out.storeBytes(of: dmin.bitPattern, toByteOffset: 82, as: UInt16.self)
    }

    /// The (scale, min) with x ≈ scale·q − min, q in 0...3, min ≥ 0, for one group: the range
    /// [min(x, 0), max(x)] in three steps, then two rounds of least squares on the codes.
    static func fitGroup(_ x: UnsafeBufferPointer<Float>) -> (Float, Float) {
        let low = min(0, x.min() ?? 0), high = max(low, x.max() ?? 0)
        var scale = (high - low) / 3, offset = -low
        guard scale > 0 else { return (0, offset) }
        var bestError = error(x, scale, offset)
        for _ in 0..<2 {
            // Fit x ≈ s·q − m over the current codes; keep it only if it helps and m stays ≥ 0.
            var sq: Float = 0, sqq: Float = 0, sx: Float = 0, sqx: Float = 0
            for v in x {
                let q = min(3, max(0, ((v + offset) / scale).rounded()))
                sq += q; sqq += q * q; sx += v; sqx += q * v
            }
            let n = Float(x.count), det = n * sqq - sq * sq
            guard det > 0 else { break }
            let s = (n * sqx - sq * sx) / det, m = -(sx - s * sq) / n
            guard s > 0, m >= 0 else { break }
            let e = error(x, s, m)
            guard e < bestError else { break }
            (scale, offset, bestError) = (s, m, e)
        }
        return (scale, offset)
    }

    private static func error(_ x: UnsafeBufferPointer<Float>, _ scale: Float, _ offset: Float) -> Float {
        var total: Float = 0
        for v in x {
            let q = min(3, max(0, ((v + offset) / scale).rounded()))
            let r = scale * q - offset - v
            total += r * r
        }
        return total
    }
}
