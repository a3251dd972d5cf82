/// Conversions of the 16-bit float formats checkpoints use into `Float`.
///
/// bf16 is the top half of an IEEE binary32, so widening is a shift and is exact; f16 (IEEE
/// binary16) needs rebiasing of the exponent, handled here bit by bit so it does not depend on
/// the platform's `Float16` support.
public enum FloatConversion {
    /// Widens one bf16 value (raw bits) to `Float`. Exact.
    @inline(__always)
    public static func float(fromBF16 bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }

    /// Narrows a `Float` to bf16 bits with round-to-nearest-even (NaN stays NaN), as PyTorch does.
    @inline(__always)
    public static func bf16(from value: Float) -> UInt16 {
        let bits = value.bitPattern
        if value.isNaN { return UInt16(truncatingIfNeeded: (bits >> 16) | 0x40) }
        let roundingBias = ((bits >> 16) & 1) + 0x7FFF
        return UInt16(truncatingIfNeeded: (bits &+ roundingBias) >> 16)
    }

    /// Widens one IEEE half-precision value (raw bits) to `Float`. Exact, including subnormals.
    @inline(__always)
    public static func float(fromF16 bits: UInt16) -> Float {
        let sign = UInt32(bits & 0x8000) << 16
        let exponent = UInt32(bits >> 10) & 0x1F
        var mantissa = UInt32(bits) & 0x3FF
        if exponent == 0x1F { // inf or NaN
            return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
        }
        if exponent == 0 {
            if mantissa == 0 { return Float(bitPattern: sign) }
            // Subnormal: normalise the mantissa.
            var shift: UInt32 = 0
            while mantissa & 0x400 == 0 { mantissa <<= 1; shift += 1 }
            mantissa &= 0x3FF
            return Float(bitPattern: sign | ((127 - 15 + 1 - shift) << 23) | (mantissa << 13))
        }
        return Float(bitPattern: sign | ((exponent + 127 - 15) << 23) | (mantissa << 13))
    }

    /// Widens `count` bf16 values into `destination`.
    public static func convertBF16(_ source: UnsafePointer<UInt16>, to destination: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        // 16 lanes at a time: the compiler turns this into vpmovzxwd + vpslld on AVX2.
        while i + 16 <= count {
            let raw = UnsafeRawPointer(source + i).loadUnaligned(as: SIMD16<UInt16>.self)
            let widened = SIMD16<UInt32>(truncatingIfNeeded: raw) &<< 16
            UnsafeMutableRawPointer(destination + i).storeBytes(of: unsafeBitCast(widened, to: SIMD16<Float>.self), as: SIMD16<Float>.self)
            i += 16
        }
        while i < count { destination[i] = float(fromBF16: source[i]); i += 1 }
    }

    /// Widens `count` f16 values into `destination`.
    public static func convertF16(_ source: UnsafePointer<UInt16>, to destination: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { destination[i] = float(fromF16: source[i]) }
    }
}
