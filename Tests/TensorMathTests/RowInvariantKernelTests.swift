import Foundation
import Testing
@testable import TensorMath

/// Any number of input rows must give, per row, exactly the bits one row alone gives: a prompt
/// row computed in a prefill chunk of any size must equal the same row computed cold in another
/// chunking, or decoded alone (partial prompt-cache hits rely on it).
@Suite struct RowInvariantKernelTests {
    static func bf16Matrix(rows: Int, cols: Int, seed: UInt64) -> WeightMatrix {
        let bits = AlignedBuffer(randomFloats(rows * cols, seed: seed).map(FloatConversion.bf16(from:)))
        return WeightMatrix(rows: rows, cols: cols, storage: .bf16(UnsafePointer(bits.pointer)), owner: bits)
    }

    /// Each row alone through `apply` (the decode GEMV) against all rows at once through `apply`.
    func expectRowInvariant(_ matrix: WeightMatrix, rowCounts: [Int], seed: UInt64) {
        for n in rowCounts {
            let x = randomFloats(n * matrix.cols, seed: seed + UInt64(n))
            var alone = [Float](repeating: 0, count: n * matrix.rows)
            var batched = alone
            x.withUnsafeBufferPointer { xp in
                alone.withUnsafeMutableBufferPointer { y in
                    for r in 0..<n { matrix.apply(xp.baseAddress! + r * matrix.cols, rowCount: 1, into: y.baseAddress! + r * matrix.rows) }
                }
                batched.withUnsafeMutableBufferPointer { matrix.apply(xp.baseAddress!, rowCount: n, into: $0.baseAddress!) }
            }
            #expect(batched.map(\.bitPattern) == alone.map(\.bitPattern), "\(matrix.rows)x\(matrix.cols), \(n) rows")
        }
    }

    @Test func bf16AnyRowCountMatchesOneRowAlone() {
        // 70 columns: blocks of 16 plus a scalar tail; 1100x1024 is split over two threads and
        // tiled; 300x3000 has more input rows than one widening panel holds at 300 rows. With
        // AVX-512 the row counts leave every remainder of the 6-input tiles (9: 3, 13: 1, 14: 2,
        // 64: 4, 65: 5) and 23 and 77 rows a remainder of the 4-row tiles; 77x2880 is gpt-oss-20b's width.
        for (rows, cols, counts) in [(23, 70, [2, 5, 8, 9, 13, 14, 64, 65, 257]), (1100, 1024, [9, 31, 130]), (300, 3000, [9, 200]),
                                     (77, 2880, [3, 7, 9, 14, 36])] {
            expectRowInvariant(Self.bf16Matrix(rows: rows, cols: cols, seed: 21), rowCounts: counts, seed: 22)
        }
    }

    @Test func f32AnyRowCountMatchesOneRowAloneAndTheRowwisePath() {
        // 70 columns: blocks of 16 plus a scalar tail; odd weight rows leave a single-row remainder;
        // 1100x1024 is split over two threads and tiled.
        for (rows, cols, counts) in [(23, 70, [2, 3, 9, 13, 64, 65]), (1100, 1024, [9, 31]), (8, 5, [1, 4])] {
            let values = AlignedBuffer(randomFloats(rows * cols, seed: 31))
            let matrix = WeightMatrix(rows: rows, cols: cols, storage: .f32(UnsafePointer(values.pointer)), owner: values)
            expectRowInvariant(matrix, rowCounts: counts, seed: 32)
            // applyRowwise (the LM head's path) gives the same bits, and the values are the product's.
            let n = counts.last!
            let x = randomFloats(n * cols, seed: 33)
            var applied = [Float](repeating: 0, count: n * rows), rowwise = applied
            x.withUnsafeBufferPointer { xp in
                applied.withUnsafeMutableBufferPointer { matrix.apply(xp.baseAddress!, rowCount: n, into: $0.baseAddress!) }
                rowwise.withUnsafeMutableBufferPointer { matrix.applyRowwise(xp.baseAddress!, rowCount: n, into: $0.baseAddress!) }
            }
            #expect(applied.map(\.bitPattern) == rowwise.map(\.bitPattern))
            var worst: Float = 0
            for j in 0..<n {
                for r in 0..<rows {
                    var reference: Double = 0
                    for c in 0..<cols { reference += Double(values.pointer[r * cols + c]) * Double(x[j * cols + c]) }
                    worst = max(worst, abs(applied[j * rows + r] - Float(reference)) / max(1, Float(abs(reference))))
                }
            }
            #expect(worst < 1e-4, "\(rows)x\(cols): relative error \(worst)")
            // The Swift SIMD kernel (machines without AVX-512) is row-invariant too.
            var swiftAlone = [Float](repeating: 0, count: n * rows), swiftBatched = swiftAlone
            x.withUnsafeBufferPointer { xp in
                swiftAlone.withUnsafeMutableBufferPointer { yp in
                    for j in 0..<n {
                        F32RowInvariantKernels.swiftProduct(values.pointer, rows: rows, cols: cols, x: xp.baseAddress! + j * cols, count: 1, y: yp.baseAddress! + j * rows)
                    }
                }
                swiftBatched.withUnsafeMutableBufferPointer {
                    F32RowInvariantKernels.swiftProduct(values.pointer, rows: rows, cols: cols, x: xp.baseAddress!, count: n, y: $0.baseAddress!)
                }
            }
            #expect(swiftBatched.map(\.bitPattern) == swiftAlone.map(\.bitPattern))
            #expect(zip(swiftBatched, applied).allSatisfy { abs($0 - $1) <= 1e-4 * max(1, abs($1)) })
        }
    }

    /// Timing of the row-invariant bf16 product against the sgemm path it replaced (the weights
    /// widened to f32, then OpenBLAS sgemm), one thread each, at the demo model's and
    /// OLMoE-1B-7B's matrix shapes; only with `MOE_ROW_INVARIANT_BENCH=1` (a measurement,
    /// printed, not an assertion).
    @Test(.enabled(if: ProcessInfo.processInfo.environment["MOE_ROW_INVARIANT_BENCH"] == "1"))
    func timingAgainstSGEMM() {
        WeightMatrix.configureThreading() // one OpenBLAS thread, as the server runs it (else sgemm uses both cores)
        let shapes: [(String, Int, Int)] = [("demo q/o 256x256", 256, 256), ("demo expert 128x256", 128, 256),
                                            ("demo down 256x128", 256, 128), ("olmoe q 2048x2048", 2048, 2048),
                                            ("olmoe expert 1024x2048", 1024, 2048), ("olmoe down 2048x1024", 2048, 1024)]
        for (name, rows, cols) in shapes {
            let matrix = Self.bf16Matrix(rows: rows, cols: cols, seed: 3)
            guard case .bf16(let w) = matrix.storage else { continue }
            let widened = AlignedBuffer<Float>(count: rows * cols)
            for n in [2, 4, 8, 9, 32, 64, 256] {
                let x = randomFloats(n * cols, seed: 4)
                var y = [Float](repeating: 0, count: n * rows)
                let reps = max(3, min(200, 400_000_000 / (n * rows * cols)))
                func median(_ body: () -> Void) -> Double {
                    var times: [Double] = []
                    for _ in 0..<7 {
                        let start = DispatchTime.now().uptimeNanoseconds
                        for _ in 0..<reps { body() }
                        times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / Double(reps))
                    }
                    return times.sorted()[3]
                }
                let sgemm = x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { yp in
                        median {
                            FloatConversion.convertBF16(w, to: widened.pointer, count: rows * cols)
                            WeightMatrix.openBLAS(widened.pointer, rows: rows, cols: cols, x: xp.baseAddress!, count: n, y: yp.baseAddress!)
                        }
                    }
                }
                let invariant = x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { yp in
                        median {
                            IntegerDotKernels.serially {
                                // `apply`: below 9 rows the multi-row kernel unless the AVX-512 tiles run
                                // (`MOE_BF16_ROWS=swift` times the Swift kernels).
                                matrix.apply(xp.baseAddress!, rowCount: n, into: yp.baseAddress!)
                            }
                        }
                    }
                }
                let gflops = { (ns: Double) in 2 * Double(n * rows * cols) / ns }
                print(String(format: "row-invariant bench: %@ n=%d  sgemm %.1f us (%.1f GFLOP/s)  row-invariant %.1f us (%.1f GFLOP/s)  ratio %.2f",
                             name, n, sgemm / 1e3, gflops(sgemm), invariant / 1e3, gflops(invariant), invariant / sgemm))
                // f32 weights (f16 checkpoints): sgemm on them against F32RowInvariantKernels.
                let f32SGEMM = x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { yp in
                        median { WeightMatrix.openBLAS(widened.pointer, rows: rows, cols: cols, x: xp.baseAddress!, count: n, y: yp.baseAddress!) }
                    }
                }
                let f32Invariant = x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { yp in
                        median {
                            IntegerDotKernels.serially {
                                F32RowInvariantKernels.product(widened.pointer, rows: rows, cols: cols, x: xp.baseAddress!, count: n, y: yp.baseAddress!)
                            }
                        }
                    }
                }
                let f32Swift = x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { yp in
                        median {
                            IntegerDotKernels.serially {
                                F32RowInvariantKernels.swiftProduct(widened.pointer, rows: rows, cols: cols, x: xp.baseAddress!, count: n, y: yp.baseAddress!)
                            }
                        }
                    }
                }
                print(String(format: "row-invariant bench f32: %@ n=%d  sgemm %.1f us (%.1f GFLOP/s)  row-invariant %.1f us (%.1f GFLOP/s)  ratio %.2f  (Swift SIMD kernel %.1f us, ratio %.2f)",
                             name, n, f32SGEMM / 1e3, gflops(f32SGEMM), f32Invariant / 1e3, gflops(f32Invariant), f32Invariant / f32SGEMM,
                             f32Swift / 1e3, f32Swift / f32SGEMM))
            }
        }
    }

    /// What route (b) of issue 24 item 5 (prefill chunks on a fixed grid, sgemm kept) would rely
    /// on: whether OpenBLAS sgemm gives a chunk's rows the same bits when other rows (another
    /// sequence's chunk or decode rows) share the product, and whether a row differs from the
    /// decode GEMV's. Printed; only with `MOE_ROW_INVARIANT_BENCH=1`.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["MOE_ROW_INVARIANT_BENCH"] == "1"))
    func sgemmRowsDependOnTheirNeighbours() {
        for (rows, cols) in [(256, 256), (128, 256), (1024, 2048)] {
            let weights = AlignedBuffer(randomFloats(rows * cols, seed: 31))
            let x = randomFloats(300 * cols, seed: 32)
            // OpenBLAS itself (f32 `apply` runs F32RowInvariantKernels now).
            func openBLAS(_ n: Int, _ y: UnsafeMutablePointer<Float>) {
                x.withUnsafeBufferPointer { WeightMatrix.openBLAS(weights.pointer, rows: rows, cols: cols, x: $0.baseAddress!, count: n, y: y) }
            }
            func product(_ n: Int) -> [UInt32] {
                var y = [Float](repeating: 0, count: n * rows)
                y.withUnsafeMutableBufferPointer { openBLAS(n, $0.baseAddress!) }
                return y.map(\.bitPattern)
            }
            var alone = [Float](repeating: 0, count: rows)
            alone.withUnsafeMutableBufferPointer { openBLAS(1, $0.baseAddress!) }
            let chunk = product(64)
            for n in [65, 67, 72, 128, 256, 300] {
                let wider = product(n)
                let differing = (0..<64).filter { r in chunk[r * rows ..< (r + 1) * rows] != wider[r * rows ..< (r + 1) * rows] }.count
                print("sgemm neighbours: \(rows)x\(cols): rows 0..<64 computed with \(n - 64) more rows: \(differing) of 64 rows differ")
            }
            let firstRow = Array(chunk[0..<rows])
            print("sgemm neighbours: \(rows)x\(cols): row 0 in a 64-row sgemm vs the 1-row sgemv: \(firstRow == alone.map(\.bitPattern) ? "same" : "differs")")
        }
    }
}
