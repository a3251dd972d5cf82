import Foundation
import Testing
import CKernels
import TensorMath

/// GGUF F16 matrices multiply as llama.cpp's CPU backend multiplies them (issue 21): activations
/// rounded to float16, then ggml's `ggml_vec_dot_f16` order (x86 without AVX512-FP16), written out
/// here in scalar Swift from ggml-cpu's vec.cpp / simd-mappings.h: the kernel gives its bits at every
/// level, for every batch size and row split.
@Suite struct GGMLF16Tests {
    /// ggml_vec_dot_f16: four 16-lane accumulators over chunks of 64 (fused multiply-adds), reduced
    /// (0+2)+(1+3), then as GCC's `_mm512_reduce_add_ps` (high 8 + low 8, high 4 + low 4, {0+2, 1+3},
    /// their sum), widened to double; the remaining cols mod 64 products added in double; rounded once.
    static func ggmlDot(_ w: [Float16], _ x: [Float16]) -> Float {
        let cols = w.count, np = cols & ~63
        var acc = [[Float]](repeating: [Float](repeating: 0, count: 16), count: 4)
        for i in stride(from: 0, to: np, by: 64) {
            for j in 0..<4 {
                for l in 0..<16 {
                    let e = i + 16 * j + l
                    acc[j][l] = acc[j][l].addingProduct(Float(w[e]), Float(x[e])) // fused, as vfmadd
                }
            }
        }
        let v = (0..<16).map { l in (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]) }
        let t = (0..<8).map { v[$0 + 8] + v[$0] }
        let u = (0..<4).map { t[$0 + 4] + t[$0] }
        var sum = Double((u[0] + u[2]) + (u[1] + u[3]))
        for e in np..<cols { sum += Double(Float(w[e]) * Float(x[e])) }
        return Float(sum)
    }

    /// llamafile's tinyBLAS (llama.cpp's order for two tokens or more when the row count is a multiple
    /// of 4): one 16-lane accumulator over chunks of 16, the last chunk zero-padded, then the same
    /// 16-lane reduction, in float.
    static func tinyBLASDot(_ w: [Float16], _ x: [Float16]) -> Float {
        var acc = [Float](repeating: 0, count: 16)
        for i in stride(from: 0, to: w.count, by: 16) {
            for l in 0..<16 {
                let (a, b) = i + l < w.count ? (Float(w[i + l]), Float(x[i + l])) : (0, 0)
                acc[l] = acc[l].addingProduct(a, b)
            }
        }
        let t = (0..<8).map { acc[$0 + 8] + acc[$0] }
        let u = (0..<4).map { t[$0 + 4] + t[$0] }
        return (u[0] + u[2]) + (u[1] + u[3])
    }

    static func weights(rows: Int, cols: Int, seed: UInt64) -> [UInt16] {
        QuantizationTests.random(rows * cols, seed: seed).map { Float16($0 * 0.2).bitPattern }
    }

    @Test(arguments: [48, 64, 96, 200, 256, 1000])
    func sumsInGgmlsOrder(cols: Int) {
        let rows = 37
        let w = Self.weights(rows: rows, cols: cols, seed: UInt64(cols))
        for n in [1, 2, 9] {
            // Large and small magnitudes, so that the float16 rounding and the order both matter.
            let x = QuantizationTests.random(n * cols, seed: UInt64(cols * 10 + n)).enumerated().map { $1 * ($0 % 5 == 0 ? 300 : 3) }
            var expected = [Float](repeating: 0, count: n * rows), tinyBLAS = expected
            for t in 0..<n {
                let xh = (0..<cols).map { Float16(x[t * cols + $0]) } // ggml's fp32 → fp16 (nearest even)
                for r in 0..<rows {
                    let wr = (0..<cols).map { Float16(bitPattern: w[r * cols + $0]) }
                    expected[t * rows + r] = Self.ggmlDot(wr, xh)
                    tinyBLAS[t * rows + r] = Self.tinyBLASDot(wr, xh)
                }
            }
            for level in KernelLevel.available {
                var y = [Float](repeating: .nan, count: n * rows)
                w.withUnsafeBufferPointer { wp in
                    GGMLF16.product(level: level, wp.baseAddress!, rows: rows, cols: cols, x: x, count: n, y: &y)
                }
                #expect(y.map(\.bitPattern) == (GGMLF16.order == 0 ? expected : tinyBLAS).map(\.bitPattern), "cols \(cols), n \(n), \(level.name)")
                // Rows split anyhow: the same bits.
                var split = [Float](repeating: .nan, count: n * rows)
                var h = [UInt16](repeating: 0, count: n * cols)
                moe_round_f16(level.rawValue, x, Int64(n * cols), &h)
                for (first, last) in [(0, 5), (5, 16), (16, rows)] {
                    moe_gemm_f16_f16(level.rawValue, 0, w, Int64(cols), Int64(first), Int64(last), h, Int64(n), &split, Int64(rows))
                }
                #expect(split.map(\.bitPattern) == expected.map(\.bitPattern), "split, cols \(cols), n \(n), \(level.name)")
                var other = [Float](repeating: .nan, count: n * rows)
                moe_gemm_f16_f16(level.rawValue, 1, w, Int64(cols), 0, Int64(rows), h, Int64(n), &other, Int64(rows))
                #expect(other.map(\.bitPattern) == tinyBLAS.map(\.bitPattern), "tinyBLAS order, cols \(cols), n \(n), \(level.name)")
            }
        }
    }

    /// Through `WeightMatrix.apply` (the storage `GGUFModel` gives an F16 tensor): each row has the
    /// bits it has alone, at every batch size.
    @Test func weightMatrixRowsAreBatchInvariant() {
        let rows = 64, cols = 48, n = 12
        let w = Self.weights(rows: rows, cols: cols, seed: 7)
        let buffer = AlignedBuffer<UInt16>(count: rows * cols)
        for i in 0..<rows * cols { buffer.pointer[i] = w[i] }
        let matrix = WeightMatrix(rows: rows, cols: cols, storage: .ggml(type: .f16, blocks: UnsafeRawPointer(buffer.pointer).assumingMemoryBound(to: UInt8.self)), owner: buffer)
        let x = QuantizationTests.random(n * cols, seed: 8).map { $0 * 4 }
        var batched = [Float](repeating: 0, count: n * rows)
        matrix.apply(x, rowCount: n, into: &batched)
        for t in 0..<n {
            var alone = [Float](repeating: 0, count: rows)
            Array(x[t * cols..<(t + 1) * cols]).withUnsafeBufferPointer { matrix.apply($0.baseAddress!, rowCount: 1, into: &alone) }
            #expect(alone.map(\.bitPattern) == Array(batched[t * rows..<(t + 1) * rows]).map(\.bitPattern))
            if IntegerDotKernels.level != nil && GGMLF16.order == 0 {
                let xh = (0..<cols).map { Float16(x[t * cols + $0]) }
                for r in 0..<rows {
                    let wr = (0..<cols).map { Float16(bitPattern: w[r * cols + $0]) }
                    #expect(alone[r].bitPattern == Self.ggmlDot(wr, xh).bitPattern)
                }
            }
        }
    }
}
