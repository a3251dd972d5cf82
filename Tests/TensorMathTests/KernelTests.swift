import Foundation
import Testing
@testable import TensorMath

func randomFloats(_ count: Int, seed: UInt64) -> [Float] {
    var generator = SplitMix64(seed: seed)  // seeded, so failures reproduce
    return (0..<count).map { _ in Float.random(in: -1...1, using: &generator) }
}

/// Reference `y = x · Wᵀ` in double precision.
func referenceProduct(_ w: [Float], rows: Int, cols: Int, _ x: [Float], n: Int) -> [Double] {
    var y = [Double](repeating: 0, count: n * rows)
    for t in 0..<n { for r in 0..<rows { var s = 0.0; for c in 0..<cols { s += Double(w[r * cols + c]) * Double(x[t * cols + c]) }; y[t * rows + r] = s } }
    return y
}

@Suite struct KernelTests {
    @Test(arguments: [1, 2, 5]) func f32ProductMatchesReference(n: Int) {
        let rows = 19, cols = 37
        let w = randomFloats(rows * cols, seed: 1), x = randomFloats(n * cols, seed: 2)
        let matrix = WeightMatrix(rows: rows, cols: cols, values: w)
        var y = [Float](repeating: 0, count: n * rows)
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { matrix.apply(xp.baseAddress!, rowCount: n, into: $0.baseAddress!) } }
        let expected = referenceProduct(w, rows: rows, cols: cols, x, n: n)
        for i in y.indices { #expect(abs(Double(y[i]) - expected[i]) < 1e-4) }
    }

    @Test(arguments: [1, 3, 4, 9]) func bf16ProductMatchesWidenedReference(n: Int) {
        let rows = 23, cols = 70 // not a multiple of 16: exercises the scalar tail
        let bits = randomFloats(rows * cols, seed: 3).map(FloatConversion.bf16(from:))
        let widened = bits.map(FloatConversion.float(fromBF16:))
        let storage = AlignedBuffer(bits)
        let matrix = WeightMatrix(rows: rows, cols: cols, storage: .bf16(UnsafePointer(storage.pointer)), owner: storage)
        let x = randomFloats(n * cols, seed: 4)
        var y = [Float](repeating: 0, count: n * rows)
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { matrix.apply(xp.baseAddress!, rowCount: n, into: $0.baseAddress!) } }
        let expected = referenceProduct(widened, rows: rows, cols: cols, x, n: n)
        for i in y.indices { #expect(abs(Double(y[i]) - expected[i]) < 1e-4) }
    }

    @Test func rmsNormNormalisesAndScales() {
        var x: [Float] = [3, 4, 0, 0]
        let weight: [Float] = [1, 2, 1, 1]
        x.withUnsafeMutableBufferPointer { Ops.rmsNorm($0.baseAddress!, rowCount: 1, dim: 4, weight: weight, eps: 0) }
        // mean(x²) = 25/4, rms = 2.5
        #expect(abs(x[0] - 1.2) < 1e-6 && abs(x[1] - 3.2) < 1e-6 && x[2] == 0)
    }

    @Test func softmaxIsStableAndSumsToOne() {
        var x: [Float] = [1000, 1001, 999]
        x.withUnsafeMutableBufferPointer { Ops.softmax($0.baseAddress!, count: 3) }
        #expect(abs(x.reduce(0, +) - 1) < 1e-6)
        #expect(abs(x[1] - 0.66524096) < 1e-6)
    }

    @Test func topKOrdersLargestFirstAndPrefersLowerIndexOnTies() {
        let values: [Float] = [0.1, 0.5, 0.3, 0.5, 0.9, 0.0]
        #expect(Ops.topK(values, count: values.count, k: 3) == [4, 1, 3])
        #expect(Ops.topK(values, count: values.count, k: 1) == [4])
        #expect(Ops.topK(values, count: values.count, k: 6) == [4, 1, 3, 2, 0, 5])
    }

    @Test func siluMultiply() {
        var a: [Float] = [0, 1, -2]
        let b: [Float] = [5, 2, 1]
        a.withUnsafeMutableBufferPointer { Ops.siluMultiply($0.baseAddress!, b, count: 3) }
        #expect(a[0] == 0)
        #expect(abs(a[1] - 2 * 0.7310586) < 1e-6)
        #expect(abs(a[2] - (-2 * 0.11920292)) < 1e-6)
    }

    @Test func alignedBufferIsAlignedAndZeroed() {
        let buffer = AlignedBuffer<UInt8>(count: 10_000, alignment: 4096)
        #expect(Int(bitPattern: buffer.pointer) % 4096 == 0)
        #expect(buffer.buffer.allSatisfy { $0 == 0 })
    }
}
