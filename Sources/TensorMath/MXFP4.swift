import CKernels
import Dispatch

/// MXFP4 (OCP microscaling FP4): blocks of 32 e2m1 values sharing one e8m0 exponent.
///
/// Stored in llama.cpp's `block_mxfp4` byte layout, so a GGUF reader can hand its blocks to
/// the same kernels: 17 bytes per block, byte 0 the e8m0 exponent `e` (scale `2^(e-127)`),
/// bytes 1...16 the 32 values as nibbles, `qs[j] & 0xF` value `j` and `qs[j] >> 4` value
/// `j + 16`. A matrix `[rows, cols]` is `rows × cols/32` blocks, row-major.
///
/// gpt-oss's published safetensors pack differently: `*_blocks` hold value `2k` in the low and
/// `2k + 1` in the high nibble of byte `k`, and `*_scales` the exponents apart;
/// `repack(huggingFaceBlock:scale:into:)` converts one block exactly.
public enum MXFP4 {
    /// Values per block.
    public static let blockSize = 32
    /// Bytes per block: the exponent and 16 bytes of nibbles.
    public static let blockBytes = 17

    /// The e2m1 values by nibble: sign bit 3, exponent bits 2-1, mantissa bit 0.
    public static let e2m1: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]

    /// `2^(e-127)`; 0 gives the subnormal `2^-127`, 255 NaN (as the OCP format defines).
    @inline(__always)
    public static func scale(_ e: UInt8) -> Float {
        switch e {
        case 0: return Float(bitPattern: 0x0040_0000)
        case 255: return .nan
        default: return Float(bitPattern: UInt32(e) << 23)
        }
    }

    /// Bytes of a `[rows, cols]` matrix (`cols` a multiple of 32).
    public static func byteCount(rows: Int, cols: Int) -> Int { rows * (cols / blockSize) * blockBytes }

    /// Writes one block from gpt-oss's safetensors layout (16 bytes, value 2k in the low nibble
    /// of byte k) and its exponent as a `block_mxfp4` at `destination` (17 bytes).
    public static func repack(huggingFaceBlock source: UnsafePointer<UInt8>, scale: UInt8, into destination: UnsafeMutablePointer<UInt8>) {
        destination[0] = scale
        // value n sits in source byte n/2, high nibble when n is odd
        func nibble(_ n: Int) -> UInt8 { n & 1 == 0 ? source[n >> 1] & 0xF : source[n >> 1] >> 4 }
        for j in 0..<16 { destination[1 + j] = nibble(j) | nibble(j + 16) << 4 }
    }

    /// Widens `rows` rows of `cols` values from `blocks` into `out[rows, cols]`.
    public static func dequantize(_ blocks: UnsafePointer<UInt8>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>) {
        let perRow = cols / blockSize
        for b in 0..<(rows * perRow) {
            let block = blocks + b * blockBytes, d = scale(block[0])
            let bytes = SIMD16<UInt32>(truncatingIfNeeded: UnsafeRawPointer(block + 1).loadUnaligned(as: SIMD16<UInt8>.self))
            let destination = UnsafeMutableRawPointer(out + b * blockSize)
            destination.storeBytes(of: values(bytes & 0xF) * d, as: SIMD16<Float>.self)
            destination.storeBytes(of: values(bytes &>> 4) * d, toByteOffset: 64, as: SIMD16<Float>.self)
        }
    }

    /// Quantizes `values[rows, cols]` into blocks: each block's exponent is the smallest that
    /// keeps its largest magnitude within ±6·2^(e-127) where possible, every value rounded to the
    /// nearest e2m1 step (ties to the even code). Lossy; MXFP4 checkpoints are repacked instead.
    public static func quantize(_ values: UnsafePointer<Float>, rows: Int, cols: Int, into blocks: UnsafeMutablePointer<UInt8>) {
        let perRow = cols / blockSize
        for b in 0..<(rows * perRow) {
            let source = values + b * blockSize, block = blocks + b * blockBytes
            var amax: Float = 0
            for i in 0..<blockSize { amax = max(amax, abs(source[i])) }
            // amax / 2^(e-127) <= 6 with e as small as possible.
            var e = 127
            if amax > 0 {
                e = Int(amax.exponent) + 127 - 2
                if amax / scale(UInt8(clamping: max(e, 1))) > 6 { e += 1 }
                e = min(max(e, 1), 254)
            }
            block[0] = UInt8(e)
            let inverse = 1 / scale(UInt8(e))
            func code(_ v: Float) -> UInt8 {
                let magnitude = abs(v) * inverse
                var best = 0, bestError = Float.infinity
                for c in 0..<8 {
                    let error = abs(e2m1[c] - magnitude)
                    if error < bestError { best = c; bestError = error }
                }
                return UInt8(best) | (v < 0 && best != 0 ? 8 : 0)
            }
            for j in 0..<16 { block[1 + j] = code(source[j]) | code(source[j + 16]) << 4 }
        }
    }

    /// Matrices at least this large are split across two threads.
    static let parallelThreshold = 1 << 20

    /// The float kernel: `WeightMatrix` runs MXFP4 matrices through the integer-dot kernel
    /// (`IntegerDotKernels.mxfp4`, about twice as fast, activations rounded to 8-bit blocks) and
    /// through this one only with `MOE_KERNELS=float`.
    ///
    /// `y[n, rows] = x[n, cols] · Wᵀ` with W in MXFP4 blocks, for a few input rows (`count`
    /// ≤ 8): each block is decoded once into registers and multiplied with every input row, so
    /// the weights are read once. Per output element the arithmetic is the same whatever
    /// `count` is and at every kernel level (see `moe_gemv_mxfp4`), so a row's result does not
    /// depend on the rows beside it or the machine.
    public static func gemv(_ blocks: UnsafePointer<UInt8>, rows: Int, cols: Int, x: UnsafePointer<Float>, count: Int,
                            y: UnsafeMutablePointer<Float>) {
        precondition(count >= 1 && count <= 8, "MXFP4.gemv takes 1 to 8 input rows")
        if rows * cols >= parallelThreshold && rows >= 64 {
            let half = rows / 2
            let pointers = UncheckedSendable((blocks, x, y))
            DispatchQueue.concurrentPerform(iterations: 2) { part in
                let (blocks, x, y) = pointers.value
                rowRange(blocks, part == 0 ? 0..<half : half..<rows, cols: cols, x: x, count: count, y: y, yStride: rows)
            }
        } else {
            rowRange(blocks, 0..<rows, cols: cols, x: x, count: count, y: y, yStride: rows)
        }
    }

    /// The e2m1 values of 16 nibble codes, computed from their bits rather than looked up lane by
    /// lane (the lookups made the kernel decode-bound at 0.2 GB/s): magnitude code `m` has exponent
    /// field `m >> 1` and mantissa bit `m & 1`; `e > 0` is `2^(e-1)·(1 + mantissa/2)`, `e = 0` is
    /// `mantissa/2`; bit 3 is the sign. Equal to `e2m1[code]` bit for bit, -0 included.
    @inline(__always)
    static func values(_ codes: SIMD16<UInt32>) -> SIMD16<Float> {
        let magnitude = codes & 7, exponent = magnitude &>> 1, mantissa = magnitude & 1
        let normal = ((exponent &+ 126) &<< 23) | (mantissa &<< 22)
        let subnormal = (0 &- mantissa) & 0x3F00_0000 // 0.5 or 0
        // All ones where the exponent field is not zero. Integer arithmetic, not a SIMD mask: Swift's
        // `.==`/`replacing(with:where:)` compile to a lane-by-lane loop through the stack.
        let isNormal = 0 &- ((exponent | exponent &>> 1) & 1)
        let bits = (normal & isNormal) | (subnormal & ~isNormal) | ((codes & 8) &<< 28)
        return unsafeBitCast(bits, to: SIMD16<Float>.self)
    }

    /// The integer-dot kernel `IntegerDotKernels.mxfp4` runs at `level` on this machine, for reports:
    /// the level's name and its MXFP4 variant (`moe_mxfp4_kernel_name`), e.g. `avx512vnni/nibbles`.
    public static func integerKernelName(level: KernelLevel) -> String {
        "\(level.name)/" + String(cString: moe_mxfp4_kernel_name(level.rawValue))
    }

    /// `IntegerDotKernels.mxfp4` (all rows, one thread) by the block-group kernel of `level`
    /// (`moe_gemm_mxfp4_q8_rows`) whatever variant the CPU would choose: tests compare the variants.
    static func integerProductByRowsKernel(_ blocks: UnsafePointer<UInt8>, rows: Int, cols: Int, x: UnsafePointer<Float>, count n: Int,
                                           y: UnsafeMutablePointer<Float>, level: KernelLevel) {
        let nb = cols / 32
        // The activations as moe_quantize_q8 leaves them: q [n, cols], block scales and sums [n, nb].
        var q = [Int8](repeating: 0, count: n * cols), d = [Float](repeating: 0, count: n * nb), sums = [Int32](repeating: 0, count: n * nb)
        moe_quantize_q8(level.rawValue, x, Int64(n), Int64(cols), &q, &d, &sums)
        moe_gemm_mxfp4_q8_rows(level.rawValue, blocks, Int64(cols), 0, Int64(rows), q, d, sums, Int64(n), y, Int64(rows))
    }

    /// Rows `range` of the product, by the C kernel (`moe_gemv_mxfp4`, AVX2 where the CPU has it;
    /// tests pass lower levels to compare).
    static func rowRange(_ blocks: UnsafePointer<UInt8>, _ range: Range<Int>, cols: Int, x: UnsafePointer<Float>, count: Int,
                         y: UnsafeMutablePointer<Float>, yStride: Int, level: KernelLevel = .detected) {
        moe_gemv_mxfp4(Int32(level.rawValue), blocks, Int64(cols), Int64(range.lowerBound), Int64(range.upperBound),
                       x, Int64(count), y, Int64(yStride))
    }
}
