import Foundation
import Testing
import TensorMath

/// The C integer-dot kernels at every instruction-set level this machine has, against the
/// portable C kernel (bit for bit) and against float products over the dequantised operands.
@Suite struct IntegerDotKernelTests {
    /// A q4 and an int8 matrix quantised from the same random weights.
    struct Operands {
        let rows: Int, cols: Int
        let values: AlignedBuffer<Int8>, rowScales: AlignedBuffer<Float>
        let blocks: AlignedBuffer<UInt8>, blockScales: AlignedBuffer<Float>

        init(rows: Int, cols: Int, seed: UInt64) {
            self.rows = rows
            self.cols = cols
            let w = QuantizationTests.random(rows * cols, seed: seed)
            values = AlignedBuffer<Int8>(count: rows * cols)
            rowScales = AlignedBuffer<Float>(count: rows)
            blocks = AlignedBuffer<UInt8>(count: Quantization.q4BlockBytes(rows: rows, cols: cols))
            blockScales = AlignedBuffer<Float>(count: rows * cols / 32)
            w.withUnsafeBufferPointer {
                Quantization.quantizeInt8($0.baseAddress!, rows: rows, cols: cols, values: values.pointer, scales: rowScales.pointer)
                Quantization.quantizeQ4($0.baseAddress!, rows: rows, cols: cols, blocks: blocks.pointer, scales: blockScales.pointer)
            }
        }

        var q4: WeightMatrix { WeightMatrix(rows: rows, cols: cols, storage: .q4(blocks: blocks.pointer, scales: blockScales.pointer), owner: blocks) }
        var int8: WeightMatrix { WeightMatrix(rows: rows, cols: cols, storage: .int8(values: values.pointer, scales: rowScales.pointer), owner: values) }

        /// `y[n, rows]` from the kernel of `kind` at `level`.
        func product(_ kind: String, x: [Float], count n: Int, level: KernelLevel) -> [Float] {
            var y = [Float](repeating: .nan, count: n * rows)
            x.withUnsafeBufferPointer { xs in
                y.withUnsafeMutableBufferPointer { ys in
                    if kind == "q4" {
                        IntegerDotKernels.q4(blocks.pointer, scales: blockScales.pointer, rows: rows, cols: cols, x: xs.baseAddress!, count: n, y: ys.baseAddress!, level: level)
                    } else {
                        IntegerDotKernels.int8(values.pointer, scales: rowScales.pointer, rows: rows, cols: cols, x: xs.baseAddress!, count: n, y: ys.baseAddress!, level: level)
                    }
                }
            }
            return y
        }
    }

    /// 32: one block (a partial group of 8); 96: three; 256: one whole group; 288: a group and a
    /// block; 2080: eight groups and a partial one. 1, 3, 4, 5 and 9 tokens: every tile size.
    @Test(arguments: [32, 96, 256, 288, 2080])
    func everyLevelMatchesThePortableKernelBitForBit(cols: Int) {
        let operands = Operands(rows: 45, cols: cols, seed: UInt64(cols))
        print("integer-dot kernels: detected \(KernelLevel.detected.name), in use \(IntegerDotKernels.description), AVX512-BF16 \(KernelLevel.hasAVX512BF16)")
        for n in [1, 3, 4, 5, 9] {
            let x = QuantizationTests.random(n * cols, seed: UInt64(cols * 10 + n)).map { $0 * 40 }
            for kind in ["q4", "int8"] {
                let reference = operands.product(kind, x: x, count: n, level: .portable)
                for level in KernelLevel.available where level != .portable {
                    let y = operands.product(kind, x: x, count: n, level: level)
                    #expect(y.map(\.bitPattern) == reference.map(\.bitPattern), "\(kind) \(level.name), \(n) tokens, \(cols) columns")
                }
            }
        }
    }

    /// The portable kernel is the dequantised product: float sums over the weights' values and
    /// the activations rounded to 8-bit blocks, in double, agree to float rounding.
    @Test func portableKernelIsTheProductOfTheDequantisedOperands() {
        let rows = 19, cols = 320, n = 3
        let operands = Operands(rows: rows, cols: cols, seed: 7)
        let x = QuantizationTests.random(n * cols, seed: 8)
        var rounded = [Float](repeating: 0, count: n * cols)
        x.withUnsafeBufferPointer { xs in rounded.withUnsafeMutableBufferPointer { IntegerDotKernels.roundTripActivations(xs.baseAddress!, count: n, cols: cols, into: $0.baseAddress!) } }
        // Rounding to 8 bits moves each activation by at most half a step of its block, plus up to
        // 127 steps times the float16 rounding of the step (2^-11 relative; llama.cpp's Q8_0 scale).
        for b in 0..<(n * cols / 32) {
            let range = b * 32..<(b + 1) * 32
            let maximum = range.map { abs(x[$0]) }.max()!
            for i in range { #expect(abs(x[i] - rounded[i]) <= maximum / 254 * (1 + 127.0 / 1024) * 1.0001) }
        }
        for (kind, matrix) in [("q4", operands.q4), ("int8", operands.int8)] {
            let y = operands.product(kind, x: x, count: n, level: .portable)
            for t in 0..<n {
                for r in 0..<rows {
                    let w = matrix.row(r)
                    var exact = 0.0, magnitude = 0.0
                    for c in 0..<cols {
                        exact += Double(w[c]) * Double(rounded[t * cols + c])
                        magnitude += abs(Double(w[c]) * Double(rounded[t * cols + c]))
                    }
                    #expect(abs(Double(y[t * rows + r]) - exact) <= 1e-6 * magnitude + 1e-9, "\(kind) row \(r) token \(t)")
                }
            }
        }
    }

    /// Through `WeightMatrix.apply` (the engine's path): each token's output is bit-identical
    /// alone and in any batch, including the products split over threads.
    @Test(arguments: [(rows: 48, cols: 96), (rows: 512, cols: 2048)])
    func batchedOutputsAreBitIdenticalToEachTokenAlone(rows: Int, cols: Int) {
        guard IntegerDotKernels.level != nil else { return } // MOE_KERNELS=float: the Swift kernels' own tests cover it
        let operands = Operands(rows: rows, cols: cols, seed: 11)
        let n = 13
        let x = QuantizationTests.random(n * cols, seed: 12)
        for matrix in [operands.q4, operands.int8] {
            var alone = [Float](repeating: 0, count: n * rows), batched = alone, rowwise = alone
            x.withUnsafeBufferPointer { xs in
                alone.withUnsafeMutableBufferPointer { y in
                    for t in 0..<n { matrix.apply(xs.baseAddress! + t * cols, rowCount: 1, into: y.baseAddress! + t * rows) }
                }
                batched.withUnsafeMutableBufferPointer { matrix.apply(xs.baseAddress!, rowCount: n, into: $0.baseAddress!) }
                rowwise.withUnsafeMutableBufferPointer { matrix.applyRowwise(xs.baseAddress!, rowCount: n, into: $0.baseAddress!) }
            }
            #expect(batched.map(\.bitPattern) == alone.map(\.bitPattern))
            #expect(rowwise.map(\.bitPattern) == alone.map(\.bitPattern))
            // And the split product equals the portable kernel's unsplit one.
            let kind: String
            if case .q4 = matrix.storage { kind = "q4" } else { kind = "int8" }
            #expect(operands.product(kind, x: x, count: n, level: .portable).map(\.bitPattern) == batched.map(\.bitPattern))
        }
    }
}
