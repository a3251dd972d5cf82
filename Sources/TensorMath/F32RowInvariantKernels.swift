import CKernels
import Dispatch

/// f32 products (f16 and f32 checkpoints) in which every output is computed with one fixed
/// arithmetic whatever the number of input rows: with AVX-512, one 16-lane accumulator per output
/// in 4x4 register tiles (`moe_f32_rows_avx512`); otherwise two 8-lane accumulators over the row in
/// blocks of 16 (`addProduct`, fused), their sum, then the scalar tail. A prompt row so gives the same bits in a prefill chunk of any size as a
/// decode step's one row, which partial prompt-cache hits need (see `RowInvariantKernels`, the
/// bf16 counterpart, and `Engine.partialPromptReuse`). OpenBLAS's sgemv and sgemm, which these
/// replace, each accumulate in an order of their own and so differ from each other in the last
/// bits. `MOE_PREFILL_GEMM=sgemm` (`RowInvariantKernels.enabled` false) restores them.
public enum F32RowInvariantKernels {
    /// Whether products run the AVX-512 kernel: the CPU has AVX-512 F and `MOE_KERNELS` neither caps the
    /// level below it nor asks for the Swift float kernels. Fixed for the process, so every row of
    /// every product keeps one arithmetic.
    static let useAVX512 = (IntegerDotKernels.level ?? .portable) >= .avx512

    /// Weight bytes of one tile of weight rows: swept once per pair of input rows, so it stays in L2.
    static let tileBytes = 96 << 10

    /// `y[j, rows] = W[rows, cols] · x[j, cols]` for `j < count`, W in f32. Large products are split
    /// over two threads by weight rows (each output's arithmetic unchanged).
    public static func product(_ w: UnsafePointer<Float>, rows: Int, cols: Int, x: UnsafePointer<Float>, count: Int,
                               y: UnsafeMutablePointer<Float>) {
        guard count > 0, rows > 0 else { return }
        if useAVX512 {
            // 16-lane accumulators in 4x4 register tiles (f32_rows_avx512.c): 2.5-3x the Swift
            // kernel below at prefill sizes, which the 16 AVX2 registers cannot tile as widely.
            let split = rows >= 64 && count * rows * cols >= WeightMatrix.parallelGEMMWork && moe_kernels_serial() == 0
            if split {
                let half = (rows / 2 + 7) & ~7
                let pointers = UncheckedSendable((w, x, y))
                DispatchQueue.concurrentPerform(iterations: 2) { part in
                    let (w, x, y) = pointers.value
                    moe_f32_rows_avx512(w, Int64(rows), Int64(cols), x, Int64(count), y,
                                        Int64(part == 0 ? 0 : half), Int64(part == 0 ? half : rows))
                }
            } else {
                moe_f32_rows_avx512(w, Int64(rows), Int64(cols), x, Int64(count), y, 0, Int64(rows))
            }
            return
        }
        swiftProduct(w, rows: rows, cols: cols, x: x, count: count, y: y)
    }

    /// The product in Swift SIMD (8-lane accumulators; AVX2 machines): per output two
    /// accumulators over blocks of 16, their sum, then the scalar tail.
    static func swiftProduct(_ w: UnsafePointer<Float>, rows: Int, cols: Int, x: UnsafePointer<Float>, count: Int,
                             y: UnsafeMutablePointer<Float>) {
        guard count > 0, rows > 0 else { return }
        let tileRows = max(8, tileBytes / max(1, 4 * cols))
        func run(_ range: Range<Int>) {
            var tile = range.lowerBound
            while tile < range.upperBound {
                let tileRange = tile..<min(tile + tileRows, range.upperBound)
                var j = 0
                while j + 2 <= count {
                    twoInputs(w, tileRange, cols: cols, x: x + j * cols, y: y + j * rows, yStride: rows)
                    j += 2
                }
                if j < count { oneInput(w, tileRange, cols: cols, x: x + j * cols, y: y + j * rows) }
                tile = tileRange.upperBound
            }
        }
        if rows >= 64 && count * rows * cols >= WeightMatrix.parallelGEMMWork && moe_kernels_serial() == 0 {
            let half = (rows / 2 + 7) & ~7
            let step = UncheckedSendable(run)
            DispatchQueue.concurrentPerform(iterations: 2) { part in step.value(part == 0 ? 0..<half : half..<rows) }
        } else {
            run(0..<rows)
        }
    }

    /// One input row against weight rows `range`, two weight rows at a time (two load streams).
    @inline(__always)
    static func oneInput(_ w: UnsafePointer<Float>, _ range: Range<Int>, cols: Int, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let blocks = cols / 16
        let px = UnsafeRawPointer(x)
        var r = range.lowerBound
        while r + 2 <= range.upperBound {
            let row0 = UnsafeRawPointer(w + r * cols), row1 = UnsafeRawPointer(w + (r + 1) * cols)
            var a0 = SIMD8<Float>(), b0 = SIMD8<Float>(), a1 = SIMD8<Float>(), b1 = SIMD8<Float>()
            for blk in 0..<blocks {
                let offset = blk * 64
                let xa = px.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self)
                let xb = px.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self)
                a0.addProduct(row0.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self), xa)
                b0.addProduct(row0.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self), xb)
                a1.addProduct(row1.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self), xa)
                b1.addProduct(row1.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self), xb)
            }
            y[r] = (a0 + b0).sum() + tail(w + r * cols, cols: cols, from: blocks * 16, x: x)
            y[r + 1] = (a1 + b1).sum() + tail(w + (r + 1) * cols, cols: cols, from: blocks * 16, x: x)
            r += 2
        }
        if r < range.upperBound {
            let row = UnsafeRawPointer(w + r * cols)
            var a = SIMD8<Float>(), b = SIMD8<Float>()
            for blk in 0..<blocks {
                let offset = blk * 64
                a.addProduct(row.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self), px.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self))
                b.addProduct(row.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self), px.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self))
            }
            y[r] = (a + b).sum() + tail(w + r * cols, cols: cols, from: blocks * 16, x: x)
        }
    }

    /// Two input rows (`x`, `x + cols`) against weight rows `range`, two at a time: each weight
    /// load serves both inputs. Per output the arithmetic of `oneInput`.
    @inline(__always)
    static func twoInputs(_ w: UnsafePointer<Float>, _ range: Range<Int>, cols: Int, x: UnsafePointer<Float>,
                          y: UnsafeMutablePointer<Float>, yStride: Int) {
        let blocks = cols / 16
        let p0 = UnsafeRawPointer(x), p1 = UnsafeRawPointer(x + cols)
        var r = range.lowerBound
        while r + 2 <= range.upperBound {
            let row0 = UnsafeRawPointer(w + r * cols), row1 = UnsafeRawPointer(w + (r + 1) * cols)
            var a00 = SIMD8<Float>(), b00 = SIMD8<Float>(), a10 = SIMD8<Float>(), b10 = SIMD8<Float>()
            var a01 = SIMD8<Float>(), b01 = SIMD8<Float>(), a11 = SIMD8<Float>(), b11 = SIMD8<Float>()
            for blk in 0..<blocks {
                let offset = blk * 64
                let wa0 = row0.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self)
                let wb0 = row0.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self)
                let wa1 = row1.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self)
                let wb1 = row1.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self)
                let xa0 = p0.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self)
                let xb0 = p0.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self)
                a00.addProduct(wa0, xa0); b00.addProduct(wb0, xb0)
                a10.addProduct(wa1, xa0); b10.addProduct(wb1, xb0)
                let xa1 = p1.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self)
                let xb1 = p1.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self)
                a01.addProduct(wa0, xa1); b01.addProduct(wb0, xb1)
                a11.addProduct(wa1, xa1); b11.addProduct(wb1, xb1)
            }
            let w0 = w + r * cols, w1 = w + (r + 1) * cols, from = blocks * 16
            y[r] = (a00 + b00).sum() + tail(w0, cols: cols, from: from, x: x)
            y[r + 1] = (a10 + b10).sum() + tail(w1, cols: cols, from: from, x: x)
            y[yStride + r] = (a01 + b01).sum() + tail(w0, cols: cols, from: from, x: x + cols)
            y[yStride + r + 1] = (a11 + b11).sum() + tail(w1, cols: cols, from: from, x: x + cols)
            r += 2
        }
        if r < range.upperBound {
            oneInput(w, r..<range.upperBound, cols: cols, x: x, y: y)
            oneInput(w, r..<range.upperBound, cols: cols, x: x + cols, y: y + yStride)
        }
    }

    /// `Σ w[c] · x[c]` over the columns past the last whole block of 16, in order.
    @inline(__always)
    static func tail(_ w: UnsafePointer<Float>, cols: Int, from: Int, x: UnsafePointer<Float>) -> Float {
        var sum: Float = 0
        var c = from
        while c < cols { sum += w[c] * x[c]; c += 1 }
        return sum
    }
}
