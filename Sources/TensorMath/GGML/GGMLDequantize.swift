/// Decodes ggml blocks to float32, one block at a time, exactly as ggml defines each layout
/// (the reference the kernels in `GGMLKernels` are built on and tested against; the tests
/// compare it with gguf-py's numpy dequantisation of the same bytes).
///
/// Layouts (little-endian; `d`, `m`, `dmin` are float16):
/// - Q4_0 `d, qs[16]`: w[i] = d·(lo(qs[i]) − 8), w[i+16] = d·(hi(qs[i]) − 8)
/// - Q4_1 `d, m, qs[16]`: w = d·q + m
/// - Q5_0 `d, qh:u32, qs[16]`: 5-bit q = nibble | bit i of qh << 4, w = d·(q − 16)
/// - Q5_1 `d, m, qh:u32, qs[16]`: w = d·q + m
/// - Q8_0 `d, qs:i8[32]`: w = d·q
/// - Q2_K `scales[16], qs[64], d, dmin`: 16 groups of 16, 2-bit q, w = d·(sc&15)·q − dmin·(sc>>4)
/// - Q3_K `hmask[32], qs[64], scales[12], d`: 16 groups of 16, 6-bit signed scales, 3-bit q
/// - Q4_K `d, dmin, scales[12], qs[128]`: 8 groups of 32, 6-bit scale and min each
/// - Q5_K `d, dmin, scales[12], qh[32], qs[128]`; Q6_K `ql[128], qh[64], scales:i8[16], d`
/// - IQ4_NL `d, qs[16]`: as Q4_0 through a non-linear table; IQ4_XS `d, scales_h:u16,
///   scales_l[4], qs[128]`: 8 groups of 32 with 6-bit signed scales, the same table.
/// - MXFP4 `e:u8, qs[16]` (gpt-oss's experts): e2m1 nibbles times 2^(e−127), decoded by
///   `MXFP4` (the layout the safetensors path repacks gpt-oss's checkpoints into).
public enum GGMLDequantize {
    /// IQ4_NL / IQ4_XS code points.
    static let iq4Values: SIMD16<Float> = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]

    @inline(__always) static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        FloatConversion.float(fromF16: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    @inline(__always) static func byte(_ p: UnsafeRawPointer, _ offset: Int) -> UInt8 {
        p.load(fromByteOffset: offset, as: UInt8.self)
    }

    /// Low and high nibbles of the 16 bytes at `p + offset`, as floats.
    @inline(__always) static func nibbles(_ p: UnsafeRawPointer, _ offset: Int) -> (SIMD16<Float>, SIMD16<Float>) {
        let raw = p.loadUnaligned(fromByteOffset: offset, as: SIMD16<UInt8>.self)
        return (SIMD16<Float>(SIMD16<Int32>(truncatingIfNeeded: raw & 0x0F)), SIMD16<Float>(SIMD16<Int32>(truncatingIfNeeded: raw &>> 4)))
    }

    @inline(__always) static func store(_ v: SIMD16<Float>, _ out: UnsafeMutablePointer<Float>, _ at: Int) {
        UnsafeMutableRawPointer(out + at).storeBytes(of: v, as: SIMD16<Float>.self)
    }

    /// The 5th bits of 16 weights from `qh` starting at bit `first`, as 0 or 16.
    @inline(__always) static func fifthBits(_ qh: UInt32, from first: UInt32) -> SIMD16<Float> {
        let shifts = SIMD16<UInt32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) &+ first
        let bits = (SIMD16<UInt32>(repeating: qh) &>> shifts) & 1
        return SIMD16<Float>(SIMD16<Int32>(truncatingIfNeeded: bits &<< 4))
    }

    /// The 6-bit scale and min of group `j` (0..<8) of a Q4_K/Q5_K block's 12 scale bytes.
    @inline(__always) static func scaleMin(_ s: UnsafeRawPointer, _ j: Int) -> (Float, Float) {
        if j < 4 {
            return (Float(byte(s, j) & 63), Float(byte(s, j + 4) & 63))
        }
        let packed = byte(s, j + 4)
        return (Float((packed & 0x0F) | ((byte(s, j - 4) >> 2) & 0x30)), Float((packed >> 4) | ((byte(s, j) >> 2) & 0x30)))
    }

    /// IQ4 table lookups of 16 4-bit codes.
    @inline(__always) static func iq4(_ codes: SIMD16<Float>) -> SIMD16<Float> {
        var out = SIMD16<Float>()
        for i in 0..<16 { out[i] = iq4Values[Int(codes[i])] }
        return out
    }

    /// Decodes one block of `type` at `p` into `out[type.blockSize]`. `type` must be
    /// computable and not a plain float type (those are converted by `row`).
    public static func block(_ type: GGMLType, _ p: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        switch type {
        case .q4_0, .iq4_NL:
            let d = half(p, 0)
            let (lo, hi) = nibbles(p, 2)
            if type == .q4_0 {
                store((lo - 8) * d, out, 0); store((hi - 8) * d, out, 16)
            } else {
                store(iq4(lo) * d, out, 0); store(iq4(hi) * d, out, 16)
            }
        case .q4_1:
            let d = half(p, 0), m = half(p, 2)
            let (lo, hi) = nibbles(p, 4)
            store(lo * d + m, out, 0); store(hi * d + m, out, 16)
        case .q5_0:
            let d = half(p, 0)
            let qh = p.loadUnaligned(fromByteOffset: 2, as: UInt32.self)
            let (lo, hi) = nibbles(p, 6)
            store((lo + fifthBits(qh, from: 0) - 16) * d, out, 0)
            store((hi + fifthBits(qh, from: 16) - 16) * d, out, 16)
        case .q5_1:
            let d = half(p, 0), m = half(p, 2)
            let qh = p.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
            let (lo, hi) = nibbles(p, 8)
            store((lo + fifthBits(qh, from: 0)) * d + m, out, 0)
            store((hi + fifthBits(qh, from: 16)) * d + m, out, 16)
        case .q8_0:
            let d = half(p, 0)
            for h in 0..<2 {
                let q = p.loadUnaligned(fromByteOffset: 2 + 16 * h, as: SIMD16<Int8>.self)
                store(SIMD16<Float>(SIMD16<Int32>(truncatingIfNeeded: q)) * d, out, 16 * h)
            }
        case .q2_K:
            let d = half(p, 80), dmin = half(p, 82)
            for e in 0..<256 {
                let sc = byte(p, e / 16)
                let q = (byte(p, 16 + (e / 128) * 32 + e % 32) >> UInt8(2 * ((e % 128) / 32))) & 3
                out[e] = d * Float(sc & 0xF) * Float(q) - dmin * Float(sc >> 4)
            }
        case .q3_K:
            let d = half(p, 108)
            var scales = SIMD16<Float>()
            for i in 0..<16 {
                let low = i < 8 ? byte(p, 96 + i) & 0x0F : byte(p, 96 + i - 8) >> 4
                let high = (byte(p, 96 + 8 + i % 4) >> UInt8(2 * (i / 4))) & 3
                scales[i] = d * Float(Int(low | (high << 4)) - 32)
            }
            for e in 0..<256 {
                let low = Int((byte(p, 32 + (e / 128) * 32 + e % 32) >> UInt8(2 * ((e % 128) / 32))) & 3)
                let hbit = (byte(p, e % 32) >> UInt8(e / 32)) & 1
                out[e] = scales[e / 16] * Float(low - (hbit == 1 ? 0 : 4))
            }
        case .q4_K, .q5_K:
            let d = half(p, 0), dmin = half(p, 2)
            let scales = p + 4
            let isQ5 = type == .q5_K
            let qs = isQ5 ? 48 : 16
            for j in 0..<8 {
                let (sc, m) = scaleMin(scales, j)
                let scale = d * sc, offset = dmin * m
                let raw = p.loadUnaligned(fromByteOffset: qs + (j / 2) * 32, as: SIMD32<UInt8>.self)
                var q = j % 2 == 0 ? raw & 0x0F : raw &>> 4
                if isQ5 {
                    let qh = p.loadUnaligned(fromByteOffset: 16, as: SIMD32<UInt8>.self)
                    q |= ((qh &>> UInt8(j)) & 1) &<< 4
                }
                let wide = SIMD32<Float>(SIMD32<Int32>(truncatingIfNeeded: q))
                UnsafeMutableRawPointer(out + 32 * j).storeBytes(of: scale * wide - offset, as: SIMD32<Float>.self)
            }
        case .q6_K:
            let d = half(p, 208)
            for e in 0..<256 {
                let g = e / 128, r = e % 128
                let low = (byte(p, g * 64 + r % 64) >> UInt8(4 * (r / 64))) & 0x0F
                let high = (byte(p, 128 + g * 32 + r % 32) >> UInt8(2 * (r / 32))) & 3
                let scale = Float(p.load(fromByteOffset: 192 + e / 16, as: Int8.self))
                out[e] = d * scale * Float(Int(low | (high << 4)) - 32)
            }
        case .iq4_XS:
            let d = half(p, 0)
            let scalesHigh = p.loadUnaligned(fromByteOffset: 2, as: UInt16.self)
            for j in 0..<8 {
                let low = (byte(p, 4 + j / 2) >> UInt8(4 * (j % 2))) & 0x0F
                let high = UInt8((scalesHigh >> UInt16(2 * j)) & 3)
                let scale = d * Float(Int(low | (high << 4)) - 32)
                let (lo, hi) = nibbles(p, 8 + 16 * j)
                store(iq4(lo) * scale, out, 32 * j)
                store(iq4(hi) * scale, out, 32 * j + 16)
            }
        case .mxfp4:
            MXFP4.dequantize(p.assumingMemoryBound(to: UInt8.self), rows: 1, cols: MXFP4.blockSize, into: out)
        default:
            preconditionFailure("GGMLDequantize.block: \(type) is not a block type MoEServe decodes")
        }
    }

    /// Decodes `count` weights of `type` (a whole number of blocks) at `p` into `out`.
    public static func row(_ type: GGMLType, _ p: UnsafeRawPointer, count: Int, into out: UnsafeMutablePointer<Float>) {
        switch type {
        case .f32:
            UnsafeMutableRawPointer(out).copyMemory(from: p, byteCount: count * 4)
        case .f16:
            for i in 0..<count { out[i] = FloatConversion.float(fromF16: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        case .bf16:
            for i in 0..<count { out[i] = FloatConversion.float(fromBF16: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        default:
            let size = type.blockSize, bytes = type.blockBytes
            for b in 0..<(count / size) { block(type, p + b * bytes, into: out + b * size) }
        }
    }
}
