import COpenBLAS

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
        }
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ`. `x` and `y` are dense row-major; `scratch` is not needed
    /// for f32 and for single-row bf16; several bf16 rows are widened into a temporary f32 copy
    /// so that the product runs as one sgemm.
    public func apply(_ x: UnsafePointer<Float>, rowCount n: Int, into y: UnsafeMutablePointer<Float>) {
        precondition(n >= 0)
        if n == 0 { return }
        switch storage {
        case .f32(let w):
            if n == 1 {
                // sgemv: sgemm with M=1 is about 3x slower in OpenBLAS.
                cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(rows), Int32(cols), 1, w, Int32(cols), x, 1, 0, y, 1)
            } else {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(rows), Int32(cols),
                            1, x, Int32(cols), w, Int32(cols), 0, y, Int32(rows))
            }
        case .bf16(let w):
            if n < 4 {
                for r in 0..<n { BF16Kernels.gemv(w, rows: rows, cols: cols, x: x + r * cols, y: y + r * rows) }
            } else {
                let widened = AlignedBuffer<Float>(count: rows * cols)
                FloatConversion.convertBF16(w, to: widened.pointer, count: rows * cols)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(rows), Int32(cols),
                            1, x, Int32(cols), widened.pointer, Int32(cols), 0, y, Int32(rows))
            }
        case .int8(let values, let scales):
            if n < 4 {
                for r in 0..<n { QuantizedKernels.gemvInt8(values, scales: scales, rows: rows, cols: cols, x: x + r * cols, y: y + r * rows) }
            } else {
                let widened = AlignedBuffer<Float>(count: rows * cols)
                Quantization.dequantizeInt8(values, scales: scales, rows: rows, cols: cols, into: widened.pointer)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(rows), Int32(cols),
                            1, x, Int32(cols), widened.pointer, Int32(cols), 0, y, Int32(rows))
            }
        case .q4(let blocks, let scales):
            if n < 4 {
                for r in 0..<n { QuantizedKernels.gemvQ4(blocks, scales: scales, rows: rows, cols: cols, x: x + r * cols, y: y + r * rows) }
            } else {
                let widened = AlignedBuffer<Float>(count: rows * cols)
                Quantization.dequantizeQ4(blocks, scales: scales, rows: rows, cols: cols, into: widened.pointer)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(rows), Int32(cols),
                            1, x, Int32(cols), widened.pointer, Int32(cols), 0, y, Int32(rows))
            }
        }
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
        }
    }
}

/// SIMD kernels over bf16 weights. Decoding is bound by memory bandwidth, so reading half the
/// bytes of f32 is the point; widening is a shift and costs nothing next to the load.
public enum BF16Kernels {
    /// `y[rows] = W[rows, cols] · x[cols]` with W in bf16.
    public static func gemv(_ w: UnsafePointer<UInt16>, rows: Int, cols: Int, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let rowPointer = w + r * cols
            var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
            var c = 0
            while c + 16 <= cols {
                let raw = UnsafeRawPointer(rowPointer + c).loadUnaligned(as: SIMD16<UInt16>.self)
                let wide = unsafeBitCast(SIMD16<UInt32>(truncatingIfNeeded: raw) &<< 16, to: SIMD16<Float>.self)
                let xv = UnsafeRawPointer(x + c).loadUnaligned(as: SIMD16<Float>.self)
                acc0.addProduct(wide.lowHalf, xv.lowHalf)
                acc1.addProduct(wide.highHalf, xv.highHalf)
                c += 16
            }
            var sum = (acc0 + acc1).sum()
            while c < cols { sum += FloatConversion.float(fromBF16: rowPointer[c]) * x[c]; c += 1 }
            y[r] = sum
        }
    }
}
