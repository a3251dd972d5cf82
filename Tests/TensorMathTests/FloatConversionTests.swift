import Testing
@testable import TensorMath

@Suite struct FloatConversionTests {
    @Test func bf16WideningIsExact() {
        #expect(FloatConversion.float(fromBF16: 0x3F80) == 1.0)
        #expect(FloatConversion.float(fromBF16: 0xC000) == -2.0)
        #expect(FloatConversion.float(fromBF16: 0x0000) == 0.0)
        #expect(FloatConversion.float(fromBF16: 0x7F80) == .infinity)
        #expect(FloatConversion.float(fromBF16: 0x7FC0).isNaN)
    }

    @Test func bf16RoundsToNearestEven() {
        // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to even (1).
        #expect(FloatConversion.bf16(from: 1 + 0x1p-8) == 0x3F80)
        // Just above the midpoint rounds up.
        #expect(FloatConversion.bf16(from: 1 + 0x1p-8 + 0x1p-20) == 0x3F81)
        for value: Float in [0.1, -3.75, 1e-20, 65504, 3.0e38] {
            let back = FloatConversion.float(fromBF16: FloatConversion.bf16(from: value))
            #expect(abs(back - value) <= abs(value) * 0x1p-8)
        }
    }

    @Test func f16WideningCoversNormalsSubnormalsAndSpecials() {
        #expect(FloatConversion.float(fromF16: 0x3C00) == 1.0)
        #expect(FloatConversion.float(fromF16: 0xC000) == -2.0)
        #expect(FloatConversion.float(fromF16: 0x7BFF) == 65504)
        #expect(FloatConversion.float(fromF16: 0x0001) == 0x1p-24)   // smallest subnormal
        #expect(FloatConversion.float(fromF16: 0x03FF) == 1023 * 0x1p-24) // largest subnormal
        #expect(FloatConversion.float(fromF16: 0x7C00) == .infinity)
        #expect(FloatConversion.float(fromF16: 0xFC00) == -.infinity)
        #expect(FloatConversion.float(fromF16: 0x7E00).isNaN)
        #expect(FloatConversion.float(fromF16: 0x8000).sign == .minus)
    }

    @Test func bulkBF16ConversionMatchesScalarAcrossTheTail() {
        let bits: [UInt16] = (0..<37).map { UInt16(0x3F00 + $0 * 17) }
        let out = AlignedBuffer<Float>(count: bits.count)
        bits.withUnsafeBufferPointer { FloatConversion.convertBF16($0.baseAddress!, to: out.pointer, count: bits.count) }
        for (i, b) in bits.enumerated() { #expect(out[i] == FloatConversion.float(fromBF16: b)) }
    }
}
