import Foundation
import Testing
import CKernels
import TensorMath

/// GGUF Q8_0 and Q6_K products sum in ggml's own order (issue 21): the order llama.cpp's x86 CPU
/// backend uses (`ggml_vec_dot_q8_0_q8_0` / llamafile's `tinyBLAS_Q0_AVX`, `ggml_vec_dot_q6_K_q8_K`),
/// written out here in scalar Swift, is what the kernels give, bit for bit, at every level and batch
/// size. A different order differs in the last bits, which DeepSeek-V3's near-tied expert groups
/// (deepseek2-Q8_0: 0.393 nats from llama.cpp) and a near-tied Qwen3-MoE router (qwen3moe-Q6_K:
/// 1.06) followed; the GGUF reference tests hold the end result, this test the order itself.
@Suite struct GGUFSummationOrderTests {
    /// ggml's `hsum_float_8`: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
    static func hsum8(_ a: [Float]) -> Float {
        ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    }

    static func half(_ bytes: [UInt8], _ at: Int) -> Float {
        Float(Float16(bitPattern: UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8))
    }

    static func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed
        return (0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
    }

    static func setHalf(_ bytes: inout [UInt8], _ at: Int, _ value: Float) {
        let bits = Float16(value).bitPattern
        bytes[at] = UInt8(bits & 0xFF)
        bytes[at + 1] = UInt8(bits >> 8)
    }

    /// Q8_0: lane k = Σ over blocks in order of fma(d_w·d_x, Σ of the block's products 4k..4k+3).
    @Test(arguments: [32, 64, 288])
    func q8_0SumsInGgmlsOrder(cols: Int) {
        let rows = 9, nb = cols / 32
        var blocks = Self.randomBytes(rows * nb * 34, seed: UInt64(cols))
        for b in 0..<rows * nb { Self.setHalf(&blocks, b * 34, Float(b % 7 + 1) * (b % 2 == 0 ? 3e-3 : -2e-3)) }
        for n in [1, 2, 5] {
            let x = QuantizationTests.random(n * cols, seed: UInt64(cols * 10 + n)).map { $0 * 30 }
            var q = [Int8](repeating: 0, count: n * cols), d = [Float](repeating: 0, count: n * nb)
            var sums = [Int32](repeating: 0, count: n * nb)
            let level = IntegerDotKernels.level ?? .portable
            moe_quantize_q8(level.rawValue, x, Int64(n), Int64(cols), &q, &d, &sums)
            var expected = [Float](repeating: 0, count: n * rows)
            for r in 0..<rows {
                for t in 0..<n {
                    var lanes = [Float](repeating: 0, count: 8)
                    for b in 0..<nb {
                        let block = (r * nb + b) * 34
                        let scale = Self.half(blocks, block) * d[t * nb + b]
                        for k in 0..<8 {
                            var s: Int32 = 0
                            for i in 4 * k..<4 * k + 4 { s += Int32(Int8(bitPattern: blocks[block + 2 + i])) * Int32(q[t * cols + b * 32 + i]) }
                            lanes[k] = lanes[k].addingProduct(scale, Float(s)) // fused, as vfmadd
                        }
                    }
                    expected[t * rows + r] = Self.hsum8(lanes)
                }
            }
            for kernelLevel in KernelLevel.available {
                var y = [Float](repeating: .nan, count: n * rows)
                blocks.withUnsafeBufferPointer { w in
                    IntegerDotKernels.q8_0(level: kernelLevel, w.baseAddress!, rows: rows, cols: cols, x: x, count: n, y: &y)
                }
                #expect(y.map(\.bitPattern) == expected.map(\.bitPattern), "\(kernelLevel.name), \(n) rows, \(cols) columns")
            }
        }
    }

    /// Q6_K: per super-block eight int32 lanes (lane m: elements 4m..4m+3 of each 32-element chunk
    /// times their 16-group's scale, less 32·(bsums[2m]·sc[2m] + bsums[2m+1]·sc[2m+1])), each to float
    /// and fused-multiply-added with d_w·d_x into its lane; then `hsum_float_8`.
    @Test func q6_KSumsInGgmlsOrder() {
        let rows = 7, cols = 512, nb = cols / 256, bytes = 210
        var blocks = Self.randomBytes(rows * nb * bytes, seed: 14)
        for b in 0..<rows * nb { Self.setHalf(&blocks, b * bytes + 208, Float(b % 5 + 1) * 1e-3) }
        for n in [1, 3] {
            let x = QuantizationTests.random(n * cols, seed: UInt64(100 + n)).map { $0 * 30 }
            var q = [Int8](repeating: 0, count: n * cols), d = [Float](repeating: 0, count: n * nb)
            var bsums = [Int32](repeating: 0, count: n * cols / 16)
            moe_quantize_q8_K(x, Int64(n), Int64(cols), &q, &d, &bsums)
            var expected = [Float](repeating: 0, count: n * rows)
            for r in 0..<rows {
                for t in 0..<n {
                    var lanes = [Float](repeating: 0, count: 8)
                    for b in 0..<nb {
                        let blk = (r * nb + b) * bytes
                        let scales = (0..<16).map { Int32(Int8(bitPattern: blocks[blk + 192 + $0])) }
                        let bs = Array(bsums[(t * nb + b) * 16..<(t * nb + b + 1) * 16])
                        var ints = [Int32](repeating: 0, count: 8)
                        for m in 0..<8 {
                            let offset: Int32 = bs[2 * m] * scales[2 * m] + bs[2 * m + 1] * scales[2 * m + 1]
                            ints[m] = -32 * offset
                        }
                        for h in 0..<2 {
                            for k in 0..<4 {
                                for l in 0..<32 {
                                    let e = 128 * h + 32 * k + l
                                    let lowByte = Int32(blocks[blk + 64 * h + 32 * (k & 1) + l])
                                    let highByte = Int32(blocks[blk + 128 + 32 * h + l])
                                    let low: Int32 = (lowByte >> Int32(4 * (k >> 1))) & 0x0F
                                    let high: Int32 = (highByte >> Int32(2 * k)) & 3
                                    let value: Int32 = low | (high << 4)
                                    let product: Int32 = value * Int32(q[t * cols + b * 256 + e])
                                    ints[l / 4] += scales[e / 16] * product
                                }
                            }
                        }
                        let scale = Self.half(blocks, blk + 208) * d[t * nb + b]
                        for m in 0..<8 { lanes[m] = lanes[m].addingProduct(scale, Float(ints[m])) }
                    }
                    expected[t * rows + r] = Self.hsum8(lanes)
                }
            }
            for level in KernelLevel.available {
                var y = [Float](repeating: .nan, count: n * rows)
                blocks.withUnsafeBufferPointer { w in
                    IntegerDotKernels.kQuant(level: level, type: .q6_K, w.baseAddress!, rows: rows, cols: cols, x: x, count: n, y: &y)
                }
                #expect(y.map(\.bitPattern) == expected.map(\.bitPattern), "\(level.name), \(n) rows")
            }
        }
    }

    /// Q3_K and IQ4_XS as ggml's AVX2 kernels sum them (`ggml_vec_dot_q3_K_q8_K`,
    /// `ggml_vec_dot_iq4_xs_q8_K`): per super-block eight int32 lanes, lane m the products of elements
    /// 4m..4m+3 of each 32 (value · q8, Q3_K's value code + 4·high − 4) times their scale (16-group for
    /// Q3_K, 32-group for IQ4_XS), each to float and fused-multiply-added with d_w·d_x; then
    /// `hsum_float_8`. (One running fma of the exact super-block sum, before session 14, differed in
    /// the last bits: qwen3moe-IQ4_XS 0.112 nats from llama.cpp at one prefix.)
    @Test(arguments: [GGMLType.q3_K, .iq4_XS])
    func superBlockTypesSumInGgmlsOrder(type: GGMLType) {
        let iq4: [Int32] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
        let rows = 7, cols = 512, nb = cols / 256, bytes = type.blockBytes, dOffset = type == .q3_K ? 108 : 0
        var blocks = Self.randomBytes(rows * nb * bytes, seed: UInt64(type.rawValue))
        for b in 0..<rows * nb { Self.setHalf(&blocks, b * bytes + dOffset, Float(b % 5 + 1) * (b % 3 == 0 ? -1e-3 : 1e-3)) }
        // (value, scale) of element e of the super-block at byte `blk`.
        func element(_ blk: Int, _ e: Int) -> (Int32, Int32) {
            if type == .q3_K {
                let h = e / 128, k = (e % 128) / 32, l = e % 32
                let code = (Int32(blocks[blk + 32 + 32 * h + l]) >> Int32(2 * k)) & 3
                let high = (Int32(blocks[blk + l]) >> Int32(4 * h + k)) & 1
                let g = e / 16, sc = blk + 96
                let low = g < 8 ? Int32(blocks[sc + g]) & 0x0F : Int32(blocks[sc + g - 8]) >> 4
                let top = (Int32(blocks[sc + 8 + g % 4]) >> Int32(2 * (g / 4))) & 3
                return (code + 4 * high - 4, (low | (top << 4)) - 32)
            } else {
                let j = e / 32, i = e % 32
                let byte = Int32(blocks[blk + 8 + 16 * j + i % 16])
                let code = i < 16 ? byte & 0x0F : byte >> 4
                let high = Int32(blocks[blk + 2]) | Int32(blocks[blk + 3]) << 8
                let low = (Int32(blocks[blk + 4 + j / 2]) >> Int32(4 * (j % 2))) & 0x0F
                return (iq4[Int(code)], (low | (((high >> Int32(2 * j)) & 3) << 4)) - 32)
            }
        }
        for n in [1, 3] {
            let x = QuantizationTests.random(n * cols, seed: UInt64(200 + n)).map { $0 * 30 }
            var q = [Int8](repeating: 0, count: n * cols), d = [Float](repeating: 0, count: n * nb)
            var bsums = [Int32](repeating: 0, count: n * cols / 16)
            moe_quantize_q8_K(x, Int64(n), Int64(cols), &q, &d, &bsums)
            var expected = [Float](repeating: 0, count: n * rows)
            for r in 0..<rows {
                for t in 0..<n {
                    var lanes = [Float](repeating: 0, count: 8)
                    for b in 0..<nb {
                        let blk = (r * nb + b) * bytes
                        var ints = [Int32](repeating: 0, count: 8)
                        for e in 0..<256 {
                            let (value, scale) = element(blk, e)
                            ints[(e % 32) / 4] += scale * value * Int32(q[t * cols + b * 256 + e])
                        }
                        let scale = Self.half(blocks, blk + dOffset) * d[t * nb + b]
                        for m in 0..<8 { lanes[m] = lanes[m].addingProduct(scale, Float(ints[m])) }
                    }
                    expected[t * rows + r] = Self.hsum8(lanes)
                }
            }
            for level in KernelLevel.available {
                var y = [Float](repeating: .nan, count: n * rows)
                blocks.withUnsafeBufferPointer { w in
                    IntegerDotKernels.kQuant(level: level, type: type, w.baseAddress!, rows: rows, cols: cols, x: x, count: n, y: &y)
                }
                #expect(y.map(\.bitPattern) == expected.map(\.bitPattern), "\(type), \(level.name), \(n) rows")
            }
        }
    }
}
