import CKernels
import Dispatch
import Foundation

/// The instruction set the integer-dot kernels run with, chosen at run time from CPUID.
public enum KernelLevel: Int32, Sendable, CaseIterable, Comparable {
    /// Portable C: any CPU.
    case portable = 0
    /// AVX2 + FMA (vpmaddubsw on 256-bit vectors).
    case avx2 = 1
    /// AVX-512 F/BW/VL (vpmaddubsw on 512-bit vectors).
    case avx512 = 2
    /// AVX-512 VNNI (vpdpbusd).
    case avx512VNNI = 3

    /// The name `MOE_KERNELS` accepts and reports print.
    public var name: String {
        switch self {
        case .portable: return "portable"
        case .avx2: return "avx2"
        case .avx512: return "avx512"
        case .avx512VNNI: return "avx512vnni"
        }
    }

    /// The highest level this CPU and operating system support.
    public static let detected = KernelLevel(rawValue: moe_kernels_detect()) ?? .portable

    /// Every level this machine can run, lowest first (what the tests compare).
    public static var available: [KernelLevel] { allCases.filter { $0 <= detected } }

    /// Whether the CPU has AVX512-BF16 (detected and reported; no kernel uses it yet).
    public static let hasAVX512BF16 = moe_kernels_has_avx512_bf16() != 0

    public static func < (a: KernelLevel, b: KernelLevel) -> Bool { a.rawValue < b.rawValue }
}

/// Products with int8 and q4 weights as integer dot products: each activation row is quantised
/// once to 8-bit blocks of 32 (`moe_quantize_q8`), and the C kernels of `CKernels` multiply
/// the 8-bit blocks with the weights' integers (vpmaddubsw / vpdpbusd) instead of widening the
/// weights to float.
///
/// Every output's arithmetic is fixed (see `CKernels.h`): the same at every instruction-set
/// level and for any number of rows and any split over threads, so a sequence's logits are
/// bit-identical alone or batched, in prefill tiles or decode steps, and on every machine.
/// The price is the activations' rounding: a relative error of about 1/254 of each block's
/// largest activation, which the fidelity tests bound.
public enum IntegerDotKernels {
    /// The level in use: the detected one, or `MOE_KERNELS=portable|avx2|avx512|avx512vnni` (capped
    /// at the detected one); nil with `MOE_KERNELS=float`, which keeps the Swift float kernels
    /// (for side-by-side measurements).
    public static let level: KernelLevel? = {
        guard let wanted = ProcessInfo.processInfo.environment["MOE_KERNELS"], !wanted.isEmpty else { return KernelLevel.detected }
        if wanted == "float" { return nil }
        guard let chosen = KernelLevel.allCases.first(where: { $0.name == wanted }) else { return KernelLevel.detected }
        return min(chosen, KernelLevel.detected)
    }()

    /// What `level` means, for logs and reports: `avx512vnni`, or `float` when disabled.
    public static var description: String { level?.name ?? "float" }

    /// Multiply-accumulates (rows · cols · n) above which a product is split over the cores.
    static let parallelWork = 1 << 20

    /// `y[n, rows] = x[n, cols] · Wᵀ` when `W` is int8, q4 or MXFP4 with a multiple of 32 columns and
    /// the kernels are enabled; false (nothing written) otherwise.
    @inline(__always)
    static func apply(_ matrix: WeightMatrix, _ x: UnsafePointer<Float>, rowCount n: Int, into y: UnsafeMutablePointer<Float>) -> Bool {
        if case .ggml(let type, let blocks) = matrix.storage, type == .f16 {
            // GGUF F16 (any width): float16 activations, ggml's F16 dot (GGMLF16).
            guard let level else { return false }
            GGMLF16.product(level: level, UnsafeRawPointer(blocks).assumingMemoryBound(to: UInt16.self), rows: matrix.rows, cols: matrix.cols,
                            x: x, count: n, y: y)
            return true
        }
        guard let level, matrix.cols % Quantization.q4BlockSize == 0, matrix.cols > 0 else { return false }
        switch matrix.storage {
        case .q4(let blocks, let scales):
            product(level: level, q4: blocks, int8: nil, scales: scales, rows: matrix.rows, cols: matrix.cols, x: x, count: n, y: y)
            return true
        case .q4f16(let blocks, let scales):
            product(level: level, q4: blocks, int8: nil, scales: nil, halfScales: scales, rows: matrix.rows, cols: matrix.cols, x: x, count: n, y: y)
            return true
        case .int8(let values, let scales):
            product(level: level, q4: nil, int8: values, scales: scales, rows: matrix.rows, cols: matrix.cols, x: x, count: n, y: y)
            return true
        case .mxfp4(let blocks):
            product(level: level, q4: nil, int8: nil, mxfp4: blocks, scales: nil, rows: matrix.rows, cols: matrix.cols, x: x, count: n, y: y)
            return true
        case .ggml(let type, let blocks) where type == .q8_0 && q8_0Enabled:
            q8_0(level: level, blocks, rows: matrix.rows, cols: matrix.cols, x: x, count: n, y: y)
            return true
        case .ggml(let type, let blocks) where ggml32Types.contains(type) && ggmlBlocksEnabled:
            ggml32(level: level, type: type, blocks, rows: matrix.rows, cols: matrix.cols, x: x, count: n, y: y)
            return true
        case .ggml(let type, let blocks) where kQuantTypes.contains(type) && matrix.cols % GGMLType.superBlock == 0
            && (ggmlBlocksEnabled || !ggmlSuperBlockTypes.contains(type)):
            kQuant(level: level, type: type, blocks, rows: matrix.rows, cols: matrix.cols, x: x, count: n, y: y)
            return true
        default:
            return false
        }
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ` for q4 blocks (`blocks[rows, cols/32, 16]`, `scales[rows, cols/32]`) at `level`.
    public static func q4(_ blocks: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, rows: Int, cols: Int,
                          x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>, level: KernelLevel) {
        product(level: level, q4: blocks, int8: nil, scales: scales, rows: rows, cols: cols, x: x, count: n, y: y)
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ` for q4 blocks with float16 block scales (`WeightStorage.q4f16`) at `level`.
    public static func q4f16(_ blocks: UnsafePointer<UInt8>, scales: UnsafePointer<UInt16>, rows: Int, cols: Int,
                             x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>, level: KernelLevel) {
        product(level: level, q4: blocks, int8: nil, scales: nil, halfScales: scales, rows: rows, cols: cols, x: x, count: n, y: y)
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ` for int8 `values[rows, cols]` with per-row `scales` at `level`.
    public static func int8(_ values: UnsafePointer<Int8>, scales: UnsafePointer<Float>, rows: Int, cols: Int,
                            x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>, level: KernelLevel) {
        product(level: level, q4: nil, int8: values, scales: scales, rows: rows, cols: cols, x: x, count: n, y: y)
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ` for W in MXFP4 blocks (`blocks[rows, cols/32, 17]`, see `MXFP4`)
    /// at `level`: the doubled e2m1 values as int8 dotted with the 8-bit activation blocks, times
    /// each block's halved e8m0 scale and the activation block's scale (llama.cpp's arithmetic).
    public static func mxfp4(_ blocks: UnsafePointer<UInt8>, rows: Int, cols: Int,
                             x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>, level: KernelLevel) {
        product(level: level, q4: nil, int8: nil, mxfp4: blocks, scales: nil, rows: rows, cols: cols, x: x, count: n, y: y)
    }

    /// `x[n, cols]` as the kernels see it: quantised to 8-bit blocks and widened back
    /// (`out[n, cols]`); tests build their references from it.
    public static func roundTripActivations(_ x: UnsafePointer<Float>, count n: Int, cols: Int, into out: UnsafeMutablePointer<Float>) {
        let blocks = cols / Quantization.q4BlockSize
        var q = [Int8](repeating: 0, count: n * cols), d = [Float](repeating: 0, count: n * blocks), sums = [Int32](repeating: 0, count: n * blocks)
        moe_quantize_q8(KernelLevel.portable.rawValue, x, Int64(n), Int64(cols), &q, &d, &sums)
        for i in 0..<(n * cols) { out[i] = Float(q[i]) * d[i / Quantization.q4BlockSize] }
    }

    private static func product(level: KernelLevel, q4: UnsafePointer<UInt8>?, int8: UnsafePointer<Int8>?, mxfp4: UnsafePointer<UInt8>? = nil,
                                scales: UnsafePointer<Float>?, halfScales: UnsafePointer<UInt16>? = nil,
                                rows: Int, cols: Int, x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>) {
        precondition(cols % Quantization.q4BlockSize == 0, "integer-dot kernels need a multiple of 32 columns, got \(cols)")
        guard n > 0, rows > 0 else { return }
        let blocks = cols / Quantization.q4BlockSize
        // The quantised activations [n, cols] int8, their block scales and sums [n, blocks]: on the
        // stack for decode-sized products (no heap allocation per step).
        // Alignment 16: at 64 Swift took the buffer from the heap on every call (the kernels load unaligned).
        withUnsafeTemporaryAllocation(byteCount: n * cols + 8 * n * blocks, alignment: 16) { raw in
            let base = raw.baseAddress!
            let q = base.bindMemory(to: Int8.self, capacity: n * cols)
            let d = (base + n * cols).bindMemory(to: Float.self, capacity: n * blocks)
            let sums = (base + n * cols + 4 * n * blocks).bindMemory(to: Int32.self, capacity: n * blocks)
            moe_quantize_q8(level.rawValue, x, Int64(n), Int64(cols), q, d, sums)
            let pointers = UncheckedSendable((q4, int8, mxfp4, scales, halfScales, q, d, sums, y))
            // Rows first..<last; any split gives the same bits (each output's arithmetic is fixed).
            // A capture-free static function, wrapped in a closure only when split: a closure formed
            // on every call cost heap allocations per product (DecodeStepAllocationTests).
            // Split over the cores when the product is large enough to pay for the hand-off (piecesFor).
            let (span, count) = rowSpans(rows: rows, cols: cols, count: n)
            if count == 2 {
                // A decode-sized split: on the core pair's ready helper (no wake-up per product).
                CorePair.run { index in
                    runRows(pointers.value, level: level, cols: cols, rows: rows, n: n, first: index * span, last: min(rows, (index + 1) * span))
                }
            } else if count > 1 {
                DispatchQueue.concurrentPerform(iterations: count) { index in
                    runRows(pointers.value, level: level, cols: cols, rows: rows, n: n, first: index * span, last: min(rows, (index + 1) * span))
                }
            } else {
                runRows(pointers.value, level: level, cols: cols, rows: rows, n: n, first: 0, last: rows)
            }
        }
    }

    /// Rows `first..<last` of one product (`product`'s operands): any split gives the same bits.
    private static func runRows(_ p: (UnsafePointer<UInt8>?, UnsafePointer<Int8>?, UnsafePointer<UInt8>?, UnsafePointer<Float>?,
                                      UnsafePointer<UInt16>?, UnsafeMutablePointer<Int8>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Float>),
                                level: KernelLevel, cols: Int, rows: Int, n: Int, first: Int, last: Int) {
        let (q4, int8, mxfp4, scales, halfScales, q, d, sums, y) = p
        if let q4, let halfScales {
            moe_gemm_q4h_q8(level.rawValue, q4, halfScales, Int64(cols), Int64(first), Int64(last), q, d, sums, Int64(n), y, Int64(rows))
        } else if let q4 {
            moe_gemm_q4_q8(level.rawValue, q4, scales, Int64(cols), Int64(first), Int64(last), q, d, sums, Int64(n), y, Int64(rows))
        } else if let int8 {
            moe_gemm_i8_q8(level.rawValue, int8, scales, Int64(cols), Int64(first), Int64(last), q, d, sums, Int64(n), y, Int64(rows))
        } else if let mxfp4 {
            moe_gemm_mxfp4_q8(level.rawValue, mxfp4, Int64(cols), Int64(first), Int64(last), q, d, sums, Int64(n), y, Int64(rows))
        }
    }

    /// Whether GGUF Q8_0 matrices run on `moe_gemm_q8_0_q8` (the default); `MOE_GGUF_Q8_0=ggml`
    /// keeps them on the float `GGMLKernels` (for side-by-side measurements).
    static let q8_0Enabled = ProcessInfo.processInfo.environment["MOE_GGUF_Q8_0"] != "ggml"

    /// `y[n, rows] = x[n, cols] · Wᵀ` for W in GGUF Q8_0 blocks (`blocks[rows, cols/32, 34]`, as the
    /// file stores them) at `level`: the int8 weights dotted with the 8-bit activation blocks, times
    /// each block's float16 scale and the activation block's scale (llama.cpp's arithmetic, with the
    /// canonical per-output steps of the q4 kernels: row invariant, the same bits at every level).
    public static func q8_0(level: KernelLevel, _ blocks: UnsafePointer<UInt8>, rows: Int, cols: Int,
                            x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>) {
        precondition(cols % Quantization.q4BlockSize == 0, "Q8_0 needs a multiple of 32 columns, got \(cols)")
        guard n > 0, rows > 0 else { return }
        let nb = cols / Quantization.q4BlockSize
        // q[n, cols] int8, d[n, cols/32] float, sums[n, cols/32] int32 (unused here); on the stack as in `product`.
        withUnsafeTemporaryAllocation(byteCount: n * cols + 8 * n * nb, alignment: 16) { raw in
            let base = raw.baseAddress!
            let q = base.bindMemory(to: Int8.self, capacity: n * cols)
            let d = (base + n * cols).bindMemory(to: Float.self, capacity: n * nb)
            let sums = (base + n * cols + 4 * n * nb).bindMemory(to: Int32.self, capacity: n * nb)
            moe_quantize_q8(level.rawValue, x, Int64(n), Int64(cols), q, d, sums)
            let pointers = UncheckedSendable((blocks, q, d, y))
            let (span, count) = rowSpans(rows: rows, cols: cols, count: n)
            if count > 1 {
                DispatchQueue.concurrentPerform(iterations: count) { index in
                    runQ8_0Rows(pointers.value, level: level, cols: cols, rows: rows, n: n, first: index * span, last: min(rows, (index + 1) * span))
                }
            } else {
                runQ8_0Rows(pointers.value, level: level, cols: cols, rows: rows, n: n, first: 0, last: rows)
            }
        }
    }

    /// Rows `first..<last` of one Q8_0 product (`q8_0`'s operands): any split gives the same bits.
    private static func runQ8_0Rows(_ p: (UnsafePointer<UInt8>, UnsafeMutablePointer<Int8>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>),
                                    level: KernelLevel, cols: Int, rows: Int, n: Int, first: Int, last: Int) {
        let (blocks, q, d, y) = p
        moe_gemm_q8_0_q8(level.rawValue, blocks, Int64(cols), Int64(first), Int64(last), q, d, Int64(n), y, Int64(rows))
    }

    /// The GGUF K-quant types with integer-dot kernels (`moe_gemm_kquant_q8_K`, and
    /// `moe_gemm_ggml_k_q8_K` for `ggmlSuperBlockTypes`).
    public static let kQuantTypes: [GGMLType] = [.q2_K, .q4_K, .q5_K, .q6_K, .q3_K, .iq4_XS]

    /// The super-block types of `kQuantTypes` whose kernels are in `ggml_blocks.c` (issue 21 item 2).
    public static let ggmlSuperBlockTypes: [GGMLType] = [.q3_K, .iq4_XS]

    /// The GGUF 32-weight block types with integer-dot kernels on the file's blocks (`moe_gemm_ggml32_q8`).
    public static let ggml32Types: [GGMLType] = [.q4_1, .q5_0, .q5_1, .iq4_NL]

    /// Whether `ggml32Types` and `ggmlSuperBlockTypes` run on their integer-dot kernels (the
    /// default); `MOE_GGUF_BLOCKS=float` keeps them on the float `GGMLKernels` (for side-by-side measurements).
    static let ggmlBlocksEnabled = ProcessInfo.processInfo.environment["MOE_GGUF_BLOCKS"] != "float"

    /// `y[n, rows] = x[n, cols] · Wᵀ` for W in GGUF 32-weight blocks of `type` (one of `ggml32Types`,
    /// as the file stores them), the activations rounded to Q8_0 as llama.cpp rounds them, with
    /// Q8_1's float16 block sums for Q4_1/Q5_1: llama.cpp's arithmetic with exact integer sums per
    /// block and the canonical per-output float steps (row invariant, the same bits at every level).
    public static func ggml32(level: KernelLevel, type: GGMLType, _ blocks: UnsafePointer<UInt8>, rows: Int, cols: Int,
                              x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>) {
        precondition(cols % Quantization.q4BlockSize == 0, "\(type) needs a multiple of 32 columns, got \(cols)")
        guard n > 0, rows > 0 else { return }
        let nb = cols / Quantization.q4BlockSize
        // q[n, cols] int8, d[n, cols/32] float, sums[n, cols/32] int32, s[n, cols/32] float; on the stack as in `product`.
        withUnsafeTemporaryAllocation(byteCount: n * cols + 12 * n * nb, alignment: 16) { raw in
            let base = raw.baseAddress!
            let q = base.bindMemory(to: Int8.self, capacity: n * cols)
            let d = (base + n * cols).bindMemory(to: Float.self, capacity: n * nb)
            let sums = (base + n * cols + 4 * n * nb).bindMemory(to: Int32.self, capacity: n * nb)
            let s = (base + n * cols + 8 * n * nb).bindMemory(to: Float.self, capacity: n * nb)
            moe_quantize_q8(level.rawValue, x, Int64(n), Int64(cols), q, d, sums)
            if type == .q4_1 || type == .q5_1 { moe_q8_1_block_sums(x, Int64(n), Int64(cols), sums, s) }
            let pointers = UncheckedSendable((blocks, q, d, sums, s, y))
            let (span, count) = rowSpans(rows: rows, cols: cols, count: n)
            if count > 1 {
                DispatchQueue.concurrentPerform(iterations: count) { index in
                    runGGML32Rows(pointers.value, level: level, type: type, cols: cols, rows: rows, n: n,
                                  first: index * span, last: min(rows, (index + 1) * span))
                }
            } else {
                runGGML32Rows(pointers.value, level: level, type: type, cols: cols, rows: rows, n: n, first: 0, last: rows)
            }
        }
    }

    /// Rows `first..<last` of one 32-block product (`ggml32`'s operands): any split gives the same bits.
    private static func runGGML32Rows(_ p: (UnsafePointer<UInt8>, UnsafeMutablePointer<Int8>, UnsafeMutablePointer<Float>,
                                            UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>),
                                      level: KernelLevel, type: GGMLType, cols: Int, rows: Int, n: Int, first: Int, last: Int) {
        let (blocks, q, d, sums, s, y) = p
        _ = moe_gemm_ggml32_q8(level.rawValue, Int32(type.rawValue), blocks, Int64(cols), Int64(first), Int64(last),
                               q, d, sums, s, Int64(n), y, Int64(rows))
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ` for W in GGUF K-quant blocks of `type` (one of `kQuantTypes`,
    /// `cols` a multiple of 256), the activations quantised to Q8_K as llama.cpp quantises them:
    /// llama.cpp's arithmetic, with integer sums per super-block instead of widening to float.
    public static func kQuant(level: KernelLevel, type: GGMLType, _ blocks: UnsafePointer<UInt8>, rows: Int, cols: Int,
                              x: UnsafePointer<Float>, count n: Int, y: UnsafeMutablePointer<Float>) {
        precondition(cols % GGMLType.superBlock == 0, "K-quant kernels need a multiple of 256 columns, got \(cols)")
        guard n > 0, rows > 0 else { return }
        let superBlocks = cols / GGMLType.superBlock
        // q[n, cols] int8, d[n, cols/256] float, bsums[n, cols/16] int32; alignment 16 keeps it on the stack (as `product`).
        withUnsafeTemporaryAllocation(byteCount: n * cols + 4 * n * superBlocks + 64 * n * superBlocks, alignment: 16) { raw in
            let base = raw.baseAddress!
            let q = base.bindMemory(to: Int8.self, capacity: n * cols)
            let d = (base + n * cols).bindMemory(to: Float.self, capacity: n * superBlocks)
            let bsums = (base + n * cols + 4 * n * superBlocks).bindMemory(to: Int32.self, capacity: 16 * n * superBlocks)
            moe_quantize_q8_K(x, Int64(n), Int64(cols), q, d, bsums)
            let pointers = UncheckedSendable((blocks, q, d, bsums, y))
            // A capture-free static function, as in `product`: the escaping closure this built on
            // every call was a heap allocation per product on GGUF K-quant models' decode path.
            let (span, count) = rowSpans(rows: rows, cols: cols, count: n)
            if count == 2 && kQuantOnCorePair {
                // A decode-sized split (the K-quant LM head of GGUF models): on the core pair's ready
                // helper, as `product` does, instead of waking a sleeping GCD worker every token.
                CorePair.run { index in
                    runKQuantRows(pointers.value, level: level, type: type, cols: cols, rows: rows, n: n,
                                  first: index * span, last: min(rows, (index + 1) * span))
                }
            } else if count > 1 {
                DispatchQueue.concurrentPerform(iterations: count) { index in
                    runKQuantRows(pointers.value, level: level, type: type, cols: cols, rows: rows, n: n,
                                  first: index * span, last: min(rows, (index + 1) * span))
                }
            } else {
                runKQuantRows(pointers.value, level: level, type: type, cols: cols, rows: rows, n: n, first: 0, last: rows)
            }
        }
    }

    /// Whether two-way K-quant splits run on the core pair (default) or on GCD (`MOE_KQUANT_SPLIT=gcd`,
    /// the previous behaviour, kept to A/B the two with one binary).
    static let kQuantOnCorePair = ProcessInfo.processInfo.environment["MOE_KQUANT_SPLIT"] != "gcd"

    /// Rows `first..<last` of one K-quant product (`kQuant`'s operands): any split gives the same bits.
    private static func runKQuantRows(_ p: (UnsafePointer<UInt8>, UnsafeMutablePointer<Int8>, UnsafeMutablePointer<Float>,
                                            UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Float>),
                                      level: KernelLevel, type: GGMLType, cols: Int, rows: Int, n: Int, first: Int, last: Int) {
        let (blocks, q, d, bsums, y) = p
        if moe_gemm_kquant_q8_K(level.rawValue, Int32(type.rawValue), blocks, Int64(cols), Int64(first), Int64(last),
                                q, d, bsums, Int64(n), y, Int64(rows)) == 0 {
            _ = moe_gemm_ggml_k_q8_K(level.rawValue, Int32(type.rawValue), blocks, Int64(cols), Int64(first), Int64(last),
                                     q, d, bsums, Int64(n), y, Int64(rows))
        }
    }

    /// The row ranges a product is run in: `count` ranges of `span` rows (whole 16-row groups, the
    /// prefill kernel's tile, the last one shorter), more than one when the product is large enough to pay for the hand-off
    /// to the cores (GCD's idle threads sleep, see WeightMatrix.panelGEMM). Any split gives the same bits.
    static func rowSpans(rows: Int, cols: Int, count n: Int) -> (span: Int, count: Int) {
        let pieces = splits ? piecesFor(rows: rows, cols: cols, count: n) : 1
        guard pieces > 1 else { return (rows, 1) }
        let span = ((rows + pieces - 1) / pieces + 15) & ~15
        return (span, (rows + span - 1) / span)
    }

    /// How many row ranges a product of `rows × cols` weights with `n` activation rows is split
    /// into: over the cores from 1M multiply-adds for a decode GEMV (as the bf16 kernels), from
    /// 4M for a GEMM (as the widening panels did), four pieces a core for long GEMMs.
    private static func piecesFor(rows: Int, cols: Int, count n: Int) -> Int {
        let work = rows * cols * n
        return work >= (n == 1 ? parallelWork : 4 * parallelWork) && rows >= 64 ? min(rows / 32, n > 8 ? 4 * cores : cores) : 1
    }

    /// Whether products on this thread may spread over the cores: not inside `serially`.
    private static var splits: Bool { moe_kernels_serial() == 0 }

    /// Runs `body` with this thread's products unsplit when `enabled` (the caller already keeps
    /// the cores busy, as a decode step's expert workers do): splitting each of them again
    /// handed two pieces per matrix to GCD, three threads on two cores. `MOE_NESTED_SPLIT=1`
    /// keeps the nested splits (for measurements).
    @inline(__always)
    public static func serially<R>(_ enabled: Bool = true, _ body: () throws -> R) rethrows -> R {
        guard enabled && !nestedSplits else { return try body() }
        moe_kernels_serial_begin()
        defer { moe_kernels_serial_end() }
        return try body()
    }

    private static let nestedSplits = ProcessInfo.processInfo.environment["MOE_NESTED_SPLIT"] == "1"

    private static let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)
}
