import CKernels
import COpenBLAS
import Dispatch
import Foundation

/// How the elements of a `WeightMatrix` are stored.
public enum WeightStorage: @unchecked Sendable {
    /// Row-major float32.
    case f32(UnsafePointer<Float>)
    /// Row-major bfloat16 bits; widened on the fly (exact).
    case bf16(UnsafePointer<UInt16>)
    /// Row-major int8 `values[rows, cols]` with one float32 scale per row, `scales[rows]`
    /// (see `Quantization`).
    case int8(values: UnsafePointer<Int8>, scales: UnsafePointer<Float>)
    /// q4 blocks `[rows, cols/32, 16 bytes]` with one float32 scale per block,
    /// `scales[rows, cols/32]` (see `Quantization`).
    case q4(blocks: UnsafePointer<UInt8>, scales: UnsafePointer<Float>)
    /// MXFP4 blocks `[rows, cols/32, 17 bytes]` in llama.cpp's `block_mxfp4` layout (see `MXFP4`).
    case mxfp4(blocks: UnsafePointer<UInt8>)
    /// ggml blocks of a quantised `type` (`[rows, cols/blockSize]` blocks, as a GGUF file
    /// stores them, bit for bit); see `GGMLDequantize`, multiplied by `GGMLKernels`.
    case ggml(type: GGMLType, blocks: UnsafePointer<UInt8>)
    /// q4 blocks as `q4` with one float16 scale per block (IEEE binary16 bits, `scales[rows, cols/32]`):
    /// a GGUF file's Q4_0 served on the integer-dot kernels at its own 18 bytes a block (`GGMLQ4_0`).
    case q4f16(blocks: UnsafePointer<UInt8>, scales: UnsafePointer<UInt16>)
}

/// A linear layer's weight `[rows, cols]` (row-major, as PyTorch's `nn.Linear.weight` is
/// `[out_features, in_features]`), stored in f32 or bf16, multiplied as `y = x · Wᵀ`.
///
/// The matrix does not own its elements: `owner` keeps whatever does alive.
public struct WeightMatrix: @unchecked Sendable {
    /// Output features.
    public let rows: Int
    /// Input features.
    public let cols: Int
    /// Where the elements are.
    public let storage: WeightStorage
    /// Keeps the memory behind `storage` alive.
    public let owner: AnyObject?

    /// Wraps existing storage of `rows × cols` elements.
    public init(rows: Int, cols: Int, storage: WeightStorage, owner: AnyObject?) {
        self.rows = rows
        self.cols = cols
        self.storage = storage
        self.owner = owner
    }

    /// A float32 matrix that owns a copy of `values` (row-major, `rows × cols`).
    public init(rows: Int, cols: Int, values: [Float]) {
        precondition(values.count == rows * cols, "matrix \(rows)x\(cols) needs \(rows * cols) values, got \(values.count)")
        let buffer = AlignedBuffer(values)
        self.init(rows: rows, cols: cols, storage: .f32(UnsafePointer(buffer.pointer)), owner: buffer)
    }

    /// Bytes the elements occupy.
    public var byteCount: Int {
        switch storage {
        case .f32: return rows * cols * 4
        case .bf16: return rows * cols * 2
        case .int8: return rows * cols + Quantization.int8ScaleBytes(rows: rows)
        case .q4: return Quantization.q4BlockBytes(rows: rows, cols: cols) + Quantization.q4ScaleBytes(rows: rows, cols: cols)
        case .q4f16: return Quantization.q4BlockBytes(rows: rows, cols: cols) + rows * (cols / Quantization.q4BlockSize) * 2
        case .mxfp4: return MXFP4.byteCount(rows: rows, cols: cols)
        case .ggml(let type, _): return rows * (type.byteCount(elements: cols) ?? 0)
        }
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ`. `x` and `y` are dense row-major. bf16 (any row count), q4 and
    /// int8 (integer dots) and f32 (`F32RowInvariantKernels`) give each row the bits it gets alone
    /// (`RowInvariantKernels`); the float fallbacks of compressed weights above 8 rows run as sgemm.
    public func apply(_ x: UnsafePointer<Float>, rowCount n: Int, into y: UnsafeMutablePointer<Float>) {
        precondition(n >= 0)
        if n == 0 { return }
        if IntegerDotKernels.apply(self, x, rowCount: n, into: y) { return } // int8 / q4: integer dot products
        switch storage {
        case .f32(let w):
            if RowInvariantKernels.enabled {
                // Not sgemv/sgemm: every row keeps one arithmetic whatever the row count, so a
                // prompt row has the same bits in any chunk (partial prompt-cache hits are exact).
                F32RowInvariantKernels.product(w, rows: rows, cols: cols, x: x, count: n, y: y)
            } else {
                Self.openBLAS(w, rows: rows, cols: cols, x: x, count: n, y: y)
            }
        case .bf16(let w):
            if n == 1 {
                BF16Kernels.gemv(w, rows: rows, cols: cols, x: x, y: y)
            } else if n < 9 && RowInvariantKernels.useAVX512 {
                // A few sequences' decode rows: the AVX-512 tile kernel streams the weights once for
                // all of them, with the GEMV's arithmetic per output (as below).
                RowInvariantKernels.bf16(w, rows: rows, cols: cols, x: x, count: n, y: y)
            } else if n < 9 {
                MultiRowKernels.bf16(w, rows: rows, cols: cols, x: x, count: n, y: y)
            } else if RowInvariantKernels.enabled {
                // Not sgemm: every row keeps the GEMV's arithmetic, so a prompt row has the same
                // bits in any chunk (partial prompt-cache hits are exact).
                RowInvariantKernels.bf16(w, rows: rows, cols: cols, x: x, count: n, y: y)
            } else {
                panelGEMM(x, rowCount: n, into: y) { first, count, panel in
                    FloatConversion.convertBF16(w + first * cols, to: panel, count: count * cols)
                }
            }
        case .int8(let values, let scales):
            if n < 4 {
                for r in 0..<n { QuantizedKernels.gemvInt8(values, scales: scales, rows: rows, cols: cols, x: x + r * cols, y: y + r * rows) }
            } else {
                panelGEMM(x, rowCount: n, into: y) { first, count, panel in
                    Quantization.dequantizeInt8(values + first * cols, scales: scales + first, rows: count, cols: cols, into: panel)
                }
            }
        case .q4(let blocks, let scales):
            if n < 9 {
                MultiRowKernels.q4(blocks, scales: scales, rows: rows, cols: cols, x: x, count: n, y: y)
            } else {
                let blocksPerRow = cols / Quantization.q4BlockSize
                panelGEMM(x, rowCount: n, into: y) { first, count, panel in
                    Quantization.dequantizeQ4(blocks + first * blocksPerRow * Quantization.q4BlockBytes,
                                              scales: scales + first * blocksPerRow, rows: count, cols: cols, into: panel)
                }
            }
        case .q4f16: // only without the integer-dot kernels (GGMLQ4_0 makes these with them): widened scales
            GGMLQ4_0.floatScales(self).apply(x, rowCount: n, into: y)
        case .mxfp4(let blocks):
            if n < 9 {
                MXFP4.gemv(blocks, rows: rows, cols: cols, x: x, count: n, y: y)
            } else {
                let rowBytes = MXFP4.byteCount(rows: 1, cols: cols)
                panelGEMM(x, rowCount: n, into: y) { first, count, panel in
                    MXFP4.dequantize(blocks + first * rowBytes, rows: count, cols: cols, into: panel)
                }
            }
        case .ggml(let type, let blocks):
            if n < 9 {
                GGMLKernels.multiRow(type, blocks, rows: rows, cols: cols, x: x, count: n, y: y)
            } else {
                GGMLKernels.withRoundedActivations(type, x, count: n, cols: cols) { rounded in
                    panelGEMM(rounded, rowCount: n, into: y) { first, count, panel in
                        GGMLKernels.dequantizeRows(type, blocks, first: first, count: count, cols: cols, into: panel)
                    }
                }
                GGMLKernels.addBlockSumCorrection(type, blocks, rows: rows, cols: cols, x: x, count: n, y: y)
            }
        }
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ` for f32 `w` through OpenBLAS (sgemv for one row, sgemm above):
    /// what f32 products ran before `F32RowInvariantKernels`, kept for `MOE_PREFILL_GEMM=sgemm` and
    /// the side-by-side timing test.
    static func openBLAS(_ w: UnsafePointer<Float>, rows: Int, cols: Int, x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>) {
        if n == 1 {
            // sgemv: sgemm with M=1 is about 3x slower in OpenBLAS.
            cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(rows), Int32(cols), 1, w, Int32(cols), x, 1, 0, y, 1)
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(rows), Int32(cols),
                        1, x, Int32(cols), w, Int32(cols), 0, y, Int32(rows))
        }
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ` computed row by row with the GEMV kernels (several rows
    /// share each weight read), so that every output row is bit-identical to what `apply`
    /// gives for that row alone. The LM head uses it: a sequence's logits, and so its greedy
    /// tokens, must not depend on which other sequences share the step.
    public func applyRowwise(_ x: UnsafePointer<Float>, rowCount n: Int, into y: UnsafeMutablePointer<Float>) {
        if IntegerDotKernels.apply(self, x, rowCount: n, into: y) { return } // row-invariant by construction
        switch storage {
        case .f32(let w) where RowInvariantKernels.enabled:
            F32RowInvariantKernels.product(w, rows: rows, cols: cols, x: x, count: n, y: y)
        case .f32(let w):
            for r in 0..<n {
                cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(rows), Int32(cols), 1, w, Int32(cols), x + r * cols, 1, 0, y + r * rows, 1)
            }
        case .bf16(let w):
            if n == 1 {
                BF16Kernels.gemv(w, rows: rows, cols: cols, x: x, y: y)
            } else {
                MultiRowKernels.bf16(w, rows: rows, cols: cols, x: x, count: n, y: y)
            }
        case .int8(let values, let scales):
            for r in 0..<n { QuantizedKernels.gemvInt8(values, scales: scales, rows: rows, cols: cols, x: x + r * cols, y: y + r * rows) }
        case .q4(let blocks, let scales):
            MultiRowKernels.q4(blocks, scales: scales, rows: rows, cols: cols, x: x, count: n, y: y)
        case .q4f16: // as in `apply`
            GGMLQ4_0.floatScales(self).applyRowwise(x, rowCount: n, into: y)
        case .mxfp4(let blocks):
            var first = 0
            while first < n {
                let count = min(8, n - first)
                MXFP4.gemv(blocks, rows: rows, cols: cols, x: x + first * cols, count: count, y: y + first * rows)
                first += count
            }
        case .ggml(let type, let blocks):
            GGMLKernels.multiRow(type, blocks, rows: rows, cols: cols, x: x, count: n, y: y)
        }
    }

    /// `y = x · Wᵀ` for a compressed W, a panel of rows at a time: `widen(first, count, panel)`
    /// writes rows `first..<first+count` as f32 into the calling thread's panel (2 MiB, reused),
    /// and one sgemm fills columns `first..<first+count` of `y`. Widening a whole 12 MB bf16
    /// expert into a fresh 25 MB buffer per call cost more in page faults than the product.
    private func panelGEMM(_ x: UnsafePointer<Float>, rowCount n: Int, into y: UnsafeMutablePointer<Float>,
                           widen: (Int, Int, UnsafeMutablePointer<Float>) -> Void) {
        guard cols > 0 else {
            // An empty inner dimension: every output is zero.
            for r in 0..<n { (y + r * rows).update(repeating: 0, count: rows) }
            return
        }
        let panelRows = max(1, WideningPanel.floats / cols)
        let panels = (rows + panelRows - 1) / panelRows
        // One panel: widen rows first..<first+count into the calling thread's panel, multiply.
        func run(_ index: Int, _ widen: (Int, Int, UnsafeMutablePointer<Float>) -> Void) {
            let first = index * panelRows
            let count = min(panelRows, rows - first)
            let buffer = count * cols <= WideningPanel.floats ? WideningPanel.current : AlignedBuffer<Float>(count: count * cols).pointer
            widen(first, count, buffer)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(count), Int32(cols),
                        1, x, Int32(cols), buffer, Int32(cols), 0, y + first, Int32(rows))
        }
        if panels > 1 && n * rows * cols >= WeightMatrix.parallelGEMMWork {
            // Panels are independent (disjoint columns of y): spread them over the cores with
            // GCD, whose idle threads sleep. OpenBLAS runs single-threaded (see
            // `configureThreading`): its own pool spins in sched_yield between calls, and on two
            // cores that spinning took over half the CPU time of batched decoding.
            withoutActuallyEscaping(widen) { widen in
                let step = UncheckedSendable({ (index: Int) in run(index, widen) })
                DispatchQueue.concurrentPerform(iterations: panels) { index in step.value(index) }
            }
        } else {
            for index in 0..<panels { run(index, widen) }
        }
    }

    /// Multiply-accumulates (n · rows · cols) above which a compressed-weight GEMM is split
    /// over threads.
    static let parallelGEMMWork = 1 << 22

    /// Makes OpenBLAS single-threaded; `WeightMatrix` parallelises large products itself.
    /// Call once at start-up.
    public static func configureThreading() {
        openblas_set_num_threads(1)
    }

    /// Row `r` widened to float32.
    public func row(_ r: Int) -> [Float] {
        switch storage {
        case .f32(let w): return Array(UnsafeBufferPointer(start: w + r * cols, count: cols))
        case .bf16(let w): return (0..<cols).map { FloatConversion.float(fromBF16: w[r * cols + $0]) }
        case .int8(let values, let scales): return (0..<cols).map { Float(values[r * cols + $0]) * scales[r] }
        case .q4(let blocks, let scales):
            var out = [Float](repeating: 0, count: cols)
            out.withUnsafeMutableBufferPointer {
                Quantization.dequantizeQ4(blocks + r * (cols / Quantization.q4BlockSize) * Quantization.q4BlockBytes,
                                          scales: scales + r * (cols / Quantization.q4BlockSize), rows: 1, cols: cols, into: $0.baseAddress!)
            }
            return out
        case .q4f16(let blocks, let halves):
            let perRow = cols / Quantization.q4BlockSize
            var scales = [Float](repeating: 0, count: perRow), out = [Float](repeating: 0, count: cols)
            scales.withUnsafeMutableBufferPointer { FloatConversion.convertF16(halves + r * perRow, to: $0.baseAddress!, count: perRow) }
            out.withUnsafeMutableBufferPointer {
                Quantization.dequantizeQ4(blocks + r * perRow * Quantization.q4BlockBytes, scales: scales, rows: 1, cols: cols, into: $0.baseAddress!)
            }
            return out
        case .mxfp4(let blocks):
            var out = [Float](repeating: 0, count: cols)
            out.withUnsafeMutableBufferPointer {
                MXFP4.dequantize(blocks + r * MXFP4.byteCount(rows: 1, cols: cols), rows: 1, cols: cols, into: $0.baseAddress!)
            }
            return out
        case .ggml(let type, let blocks):
            var out = [Float](repeating: 0, count: cols)
            out.withUnsafeMutableBufferPointer {
                GGMLKernels.dequantizeRows(type, blocks, first: r, count: 1, cols: cols, into: $0.baseAddress!)
            }
            return out
        }
    }
}

/// SIMD kernels over bf16 weights. Decoding is bound by memory bandwidth, so reading half the
/// bytes of f32 is the point; widening is a shift and costs nothing next to the load.
public enum BF16Kernels {
    /// Matrices at least this large are split across two threads: below it the hand-off costs
    /// more than it saves.
    static let parallelThreshold = 1 << 20

    /// `y[rows] = W[rows, cols] · x[cols]` with W in bf16.
    ///
    /// Sixteen bf16 weights are loaded as eight 32-bit lanes; `lane << 16` is then the even
    /// weights as floats and `lane & 0xFFFF0000` the odd ones, so widening needs only 32-bit
    /// shifts and masks (which vectorise) instead of a 16→32-bit conversion (which does not).
    /// `x` is permuted once into the matching even/odd order per block of 16.
    public static func gemv(_ w: UnsafePointer<UInt16>, rows: Int, cols: Int, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let blocks = cols / 16
        // The permuted copy of x lives on the stack when it fits: this runs for every matrix of
        // every decode step, so a heap allocation here would be one per GEMV.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: max(blocks * 16, 1)) { buffer in
            let permuted = buffer.baseAddress!
            permute(x, blocks: blocks, into: permuted)
            let xp = UnsafePointer(permuted)
            if rows * cols >= parallelThreshold && rows >= 64 {
                let half = (rows / 2 + 7) & ~7
                // Raw pointers are not Sendable; the two halves write disjoint rows of y.
                let pointers = SendablePointers(w: w, permutedX: xp, x: x, y: y)
                DispatchQueue.concurrentPerform(iterations: 2) { part in
                    let first = part == 0 ? 0 : half, last = part == 0 ? half : rows
                    rowProducts(pointers.w, first..<last, cols: cols, blocks: blocks, permutedX: pointers.permutedX, x: pointers.x, y: pointers.y)
                }
            } else {
                rowProducts(w, 0..<rows, cols: cols, blocks: blocks, permutedX: xp, x: x, y: y)
            }
        }
    }

    /// `rowRange`, or with AVX-512 the tile kernel at one input row (`moe_bf16_rows_avx512`: the same
    /// arithmetic per output, four weight rows per pass; `MOE_BF16_ROWS=swift` keeps `rowRange`).
    @inline(__always)
    static func rowProducts(_ w: UnsafePointer<UInt16>, _ range: Range<Int>, cols: Int, blocks: Int,
                            permutedX: UnsafePointer<Float>, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        if RowInvariantKernels.useAVX512 && blocks > 0 {
            moe_bf16_rows_avx512(w, Int64(range.upperBound), Int64(cols), permutedX, Int64(blocks * 16), x, 1, y,
                                 Int64(range.lowerBound), Int64(range.upperBound))
        } else {
            rowRange(w, range, cols: cols, blocks: blocks, permutedX: permutedX, x: x, y: y)
        }
    }

    /// Permutes `x` into the even/odd order of each block of 16 that `rowRange` expects.
    @inline(__always)
    static func permute(_ x: UnsafePointer<Float>, blocks: Int, into permuted: UnsafeMutablePointer<Float>) {
        for b in 0..<blocks {
            for i in 0..<8 {
                permuted[b * 16 + i] = x[b * 16 + 2 * i]
                permuted[b * 16 + 8 + i] = x[b * 16 + 2 * i + 1]
            }
        }
    }

    private struct SendablePointers: @unchecked Sendable {
        let w: UnsafePointer<UInt16>, permutedX: UnsafePointer<Float>, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>
    }

    @inline(__always)
    static func rowRange(_ w: UnsafePointer<UInt16>, _ range: Range<Int>, cols: Int, blocks: Int,
                         permutedX: UnsafePointer<Float>, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        var r = range.lowerBound
        // Two rows at a time: two independent load streams keep more reads in flight, and each
        // x block loaded from L1 serves both rows.
        while r + 2 <= range.upperBound {
            let row0 = UnsafeRawPointer(w + r * cols), row1 = UnsafeRawPointer(w + (r + 1) * cols)
            var even0 = SIMD8<Float>(), odd0 = SIMD8<Float>(), even1 = SIMD8<Float>(), odd1 = SIMD8<Float>()
            for b in 0..<blocks {
                let xe = UnsafeRawPointer(permutedX + b * 16).loadUnaligned(as: SIMD8<Float>.self)
                let xo = UnsafeRawPointer(permutedX + b * 16 + 8).loadUnaligned(as: SIMD8<Float>.self)
                let lanes0 = row0.loadUnaligned(fromByteOffset: b * 32, as: SIMD8<UInt32>.self)
                let lanes1 = row1.loadUnaligned(fromByteOffset: b * 32, as: SIMD8<UInt32>.self)
                even0.addProduct(widenEven(lanes0), xe)
                odd0.addProduct(widenOdd(lanes0), xo)
                even1.addProduct(widenEven(lanes1), xe)
                odd1.addProduct(widenOdd(lanes1), xo)
            }
            y[r] = (even0 + odd0).sum() + tail(w + r * cols, cols: cols, from: blocks * 16, x: x)
            y[r + 1] = (even1 + odd1).sum() + tail(w + (r + 1) * cols, cols: cols, from: blocks * 16, x: x)
            r += 2
        }
        if r < range.upperBound {
            let row = UnsafeRawPointer(w + r * cols)
            var even = SIMD8<Float>(), odd = SIMD8<Float>()
            for b in 0..<blocks {
                let lanes = row.loadUnaligned(fromByteOffset: b * 32, as: SIMD8<UInt32>.self)
                even.addProduct(widenEven(lanes), UnsafeRawPointer(permutedX + b * 16).loadUnaligned(as: SIMD8<Float>.self))
                odd.addProduct(widenOdd(lanes), UnsafeRawPointer(permutedX + b * 16 + 8).loadUnaligned(as: SIMD8<Float>.self))
            }
            y[r] = (even + odd).sum() + tail(w + r * cols, cols: cols, from: blocks * 16, x: x)
        }
    }

    /// The even-indexed bf16 values of 16 packed in eight 32-bit lanes, as floats.
    @inline(__always)
    static func widenEven(_ lanes: SIMD8<UInt32>) -> SIMD8<Float> { unsafeBitCast(lanes &<< 16, to: SIMD8<Float>.self) }

    /// The odd-indexed bf16 values of 16 packed in eight 32-bit lanes, as floats.
    @inline(__always)
    static func widenOdd(_ lanes: SIMD8<UInt32>) -> SIMD8<Float> {
        unsafeBitCast(lanes & SIMD8<UInt32>(repeating: 0xFFFF_0000), to: SIMD8<Float>.self)
    }

    /// Scalar dot product of the columns past the last full block of 16.
    @inline(__always)
    static func tail(_ row: UnsafePointer<UInt16>, cols: Int, from start: Int, x: UnsafePointer<Float>) -> Float {
        var sum: Float = 0
        for c in start..<cols { sum += FloatConversion.float(fromBF16: row[c]) * x[c] }
        return sum
    }
}

/// Carries non-Sendable values (pointers, closures) into a concurrent loop whose iterations
/// touch disjoint memory.
public struct UncheckedSendable<Value>: @unchecked Sendable {
    public let value: Value
    public init(_ value: Value) { self.value = value }
}

/// One reusable f32 panel per thread for widening compressed weights before sgemm.
enum WideningPanel {
    /// 2 MiB of floats: 256 rows of a 2,048-wide matrix; inside the runtime allowance.
    static let floats = 512 * 1024
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }
        return key
    }()

    /// The calling thread's panel, allocated on first use and freed when the thread exits.
    static var current: UnsafeMutablePointer<Float> {
        if let existing = pthread_getspecific(key) { return existing.assumingMemoryBound(to: Float.self) }
        var raw: UnsafeMutableRawPointer?
        posix_memalign(&raw, 64, floats * MemoryLayout<Float>.size)
        pthread_setspecific(key, raw)
        return raw!.assumingMemoryBound(to: Float.self)
    }
}
