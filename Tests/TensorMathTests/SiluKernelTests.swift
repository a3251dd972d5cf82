import CKernels
import Foundation
import Testing
import TensorMath

/// The SwiGLU activation's kernel (`Ops.siluMultiply` → `moe_silu_mul`): the same bits at every
/// instruction-set level this machine has, and within a few float ulps of the exact value.
@Suite struct SiluKernelTests {
    /// Values across the activation's whole range: random gate and up values, the edges of the
    /// clamp, zeros of both signs, subnormals, infinities and NaN.
    static func inputs() -> (a: [Float], b: [Float]) {
        var a = QuantizationTests.random(4099, seed: 7).map { $0 * 12 }
        var b = QuantizationTests.random(4099, seed: 8)
        let edges: [Float] = [0, -0, 1e-40, -1e-40, 1, -1, 86.9, 87, 87.1, -87.9, -88, -88.1, 100, -100, 1e30, -1e30,
                              .infinity, -.infinity, .nan, .leastNormalMagnitude, -.leastNormalMagnitude]
        a += edges
        b += Array(repeating: 1.5, count: edges.count)
        return (a, b)
    }

    static func run(_ level: KernelLevel, _ a: [Float], _ b: [Float]) -> [Float] {
        var out = a
        out.withUnsafeMutableBufferPointer { o in
            b.withUnsafeBufferPointer { moe_silu_mul(level.rawValue, o.baseAddress!, $0.baseAddress!, Int64(a.count)) }
        }
        return out
    }

    @Test func everyLevelGivesThePortableBits() {
        let (a, b) = Self.inputs()
        let portable = Self.run(.portable, a, b)
        for level in KernelLevel.available where level != .portable {
            let got = Self.run(level, a, b)
            for i in a.indices {
                #expect(got[i].bitPattern == portable[i].bitPattern || (got[i].isNaN && portable[i].isNaN),
                        "level \(level), a = \(a[i]): \(got[i]) against \(portable[i])")
            }
        }
        // Counts that are not a multiple of the vector width take the scalar tail.
        for count in [1, 7, 9, 15] {
            let head = (Array(a.prefix(count)), Array(b.prefix(count)))
            #expect(Self.run(.portable, head.0, head.1).map(\.bitPattern) == Array(portable.prefix(count)).map(\.bitPattern))
        }
    }

    @Test func itIsSiluTimesTheUpValue() {
        let (a, b) = Self.inputs()
        let got = Self.run(IntegerDotKernels.level ?? .portable, a, b)
        for i in a.indices {
            let v = Double(a[i]), exact = v / (1 + exp(-v)) * Double(b[i])
            if a[i].isNaN { #expect(got[i].isNaN); continue }
            if a[i] == -.infinity { #expect(got[i].isNaN); continue } // −∞ / ∞, as with expf
            if a[i] == .infinity { #expect(got[i] == .infinity); continue }
            // Below −87, silu(v) is under 1e-35 and the kernel's e^(−v) is e^87 or +∞ (then −0).
            let tolerance = 4 * Double(Float.ulpOfOne) * abs(exact) + 1e-35
            #expect(abs(Double(got[i]) - exact) <= tolerance, "a = \(a[i]), b = \(b[i]): \(got[i]) against \(exact)")
        }
        // Through the public entry point the model uses.
        var viaOps = a
        viaOps.withUnsafeMutableBufferPointer { o in b.withUnsafeBufferPointer { Ops.siluMultiply(o.baseAddress!, $0.baseAddress!, count: a.count) } }
        #expect(zip(viaOps, got).allSatisfy { $0.bitPattern == $1.bitPattern || ($0.isNaN && $1.isNaN) })
    }

    @Test func itsExponentialIsWithinTwoUlpsOfExp() {
        var worst = 0.0
        var x: Float = -87
        while x <= 88 {
            let exact = exp(Double(x)), got = Double(moe_silu_exp(x))
            worst = max(worst, abs(got - exact) / exact)
            x += 0.0137
        }
        #expect(worst <= 2.5 * Double(Float.ulpOfOne), "worst relative error \(worst)")
        print("moe_silu_exp: worst relative error \(worst) (float ulp \(Float.ulpOfOne))")
    }
}
