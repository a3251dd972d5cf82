import Dispatch
import Foundation
import TensorMath

/// The machine's memory bandwidth and how close the GEMV kernels that bound decoding come to it
/// (`moe-serve bench kernels`).
public struct KernelBenchmark: Sendable, MedianTimed {
    /// Rows of the test matrix.
    public var rows = 4096
    /// Columns of the test matrix.
    public var cols = 4096
    /// Repetitions; the median is reported.
    public var repetitions = 15

    /// A benchmark of a `rows` × `cols` matrix, `repetitions` times each.
    public init(rows: Int = 4096, cols: Int = 4096, repetitions: Int = 15) {
        self.rows = rows
        self.cols = cols
        self.repetitions = repetitions
    }

    /// The JSON `bench kernels` prints.
    public struct Result: Encodable, Sendable {
        public var memoryReadGBps1Thread: Double
        public var memoryReadGBps2Threads: Double
        public var bf16GemvGBps: Double
        public var f32SgemvGBps: Double
        public var int8GemvGBps: Double
        public var q4GemvGBps: Double
        /// MXFP4 (gpt-oss's expert format, `MXFP4.gemv`), bytes of blocks streamed per second.
        public var mxfp4GemvGBps: Double = 0
        /// q4 with float16 block scales (a GGUF's Q4_0 as served, `WeightStorage.q4f16`: 18 bytes a
        /// block), bytes of blocks and scales streamed per second.
        public var q4f16GemvGBps: Double = 0
        public var bf16GemvFractionOfBandwidth: Double
        /// Time of one `apply` over n input rows (n = 1...8) relative to one row: what a batch's
        /// extra tokens on an expert cost.
        public var q4RowsCost: [Double]
        public var bf16RowsCost: [Double]
        public var rows: Int
        public var cols: Int
        enum CodingKeys: String, CodingKey {
            case memoryReadGBps1Thread = "memory_read_gbps_1_thread", memoryReadGBps2Threads = "memory_read_gbps_2_threads"
            case bf16GemvGBps = "bf16_gemv_gbps", f32SgemvGBps = "f32_sgemv_gbps"
            case int8GemvGBps = "int8_gemv_gbps", q4GemvGBps = "q4_gemv_gbps", mxfp4GemvGBps = "mxfp4_gemv_gbps", q4f16GemvGBps = "q4f16_gemv_gbps"
            case bf16GemvFractionOfBandwidth = "bf16_gemv_fraction_of_bandwidth", rows, cols
            case q4RowsCost = "q4_rows_cost", bf16RowsCost = "bf16_rows_cost"
        }
    }

    /// Runs every measurement; returns the JSON output and a table for people.
    public func run() throws -> (result: Result, table: String) {
        guard rows > 0, cols > 0, cols % Quantization.q4BlockSize == 0, repetitions > 0 else {
            throw ToolError("--rows and --repetitions must be positive and --cols a positive multiple of \(Quantization.q4BlockSize)")
        }
        // 512 MiB: far beyond any cache, so reads come from DRAM.
        let floats = 128 << 20
        let big = AlignedBuffer<Float>(count: floats)
        for i in stride(from: 0, to: floats, by: 1024) { big[i] = Float(i & 7) }
        let bytes = Double(floats * 4)
        let read1 = bytes / median { _ = Self.sum(big.pointer, count: floats) } / 1e9
        let read2 = bytes / median {
            DispatchQueue.concurrentPerform(iterations: 2) { part in
                _ = Self.sum(big.pointer + part * floats / 2, count: floats / 2)
            }
        } / 1e9

        let bf16 = AlignedBuffer<UInt16>(count: rows * cols)
        for i in 0..<(rows * cols) { bf16[i] = FloatConversion.bf16(from: Float((i * 7) % 13) * 0.01) }
        let f32 = AlignedBuffer<Float>(count: rows * cols)
        FloatConversion.convertBF16(bf16.pointer, to: f32.pointer, count: rows * cols)
        let x = AlignedBuffer<Float>([Float](repeating: 0.5, count: cols))
        let y = AlignedBuffer<Float>(count: rows)
        let bf16Matrix = WeightMatrix(rows: rows, cols: cols, storage: .bf16(UnsafePointer(bf16.pointer)), owner: bf16)
        let f32Matrix = WeightMatrix(rows: rows, cols: cols, storage: .f32(UnsafePointer(f32.pointer)), owner: f32)
        let bf16Rate = Double(rows * cols * 2) / median { bf16Matrix.apply(x.pointer, rowCount: 1, into: y.pointer) } / 1e9
        let f32Rate = Double(rows * cols * 4) / median { f32Matrix.apply(x.pointer, rowCount: 1, into: y.pointer) } / 1e9

        // int8 (per-row scales) and q4 (32-wide blocks) of the same matrix; rates count the
        // bytes the kernel streams (values plus scales).
        let int8Values = AlignedBuffer<Int8>(count: rows * cols), int8Scales = AlignedBuffer<Float>(count: rows)
        Quantization.quantizeInt8(f32.pointer, rows: rows, cols: cols, values: int8Values.pointer, scales: int8Scales.pointer)
        let blocksPerRow = cols / Quantization.q4BlockSize
        let q4Blocks = AlignedBuffer<UInt8>(count: rows * blocksPerRow * Quantization.q4BlockBytes)
        let q4Scales = AlignedBuffer<Float>(count: rows * blocksPerRow)
        Quantization.quantizeQ4(f32.pointer, rows: rows, cols: cols, blocks: q4Blocks.pointer, scales: q4Scales.pointer)
        let int8Matrix = WeightMatrix(rows: rows, cols: cols, storage: .int8(values: UnsafePointer(int8Values.pointer), scales: UnsafePointer(int8Scales.pointer)), owner: int8Values)
        let q4Matrix = WeightMatrix(rows: rows, cols: cols, storage: .q4(blocks: UnsafePointer(q4Blocks.pointer), scales: UnsafePointer(q4Scales.pointer)), owner: q4Blocks)
        let int8Rate = Double(rows * cols + rows * 4) / median { int8Matrix.apply(x.pointer, rowCount: 1, into: y.pointer) } / 1e9
        let q4Rate = Double(q4Blocks.count + q4Scales.count * 4) / median { q4Matrix.apply(x.pointer, rowCount: 1, into: y.pointer) } / 1e9
        // The same blocks with the scales rounded to float16.
        let q4Halves = AlignedBuffer<UInt16>(count: rows * blocksPerRow)
        for i in 0..<(rows * blocksPerRow) { q4Halves[i] = Float16(q4Scales[i]).bitPattern }
        let q4f16Matrix = WeightMatrix(rows: rows, cols: cols, storage: .q4f16(blocks: UnsafePointer(q4Blocks.pointer), scales: UnsafePointer(q4Halves.pointer)),
                                       owner: q4Blocks)
        let q4f16Rate = Double(q4Blocks.count + q4Halves.count * 2) / median { q4f16Matrix.apply(x.pointer, rowCount: 1, into: y.pointer) } / 1e9
        let mxfp4Blocks = AlignedBuffer<UInt8>(count: MXFP4.byteCount(rows: rows, cols: cols))
        MXFP4.quantize(f32.pointer, rows: rows, cols: cols, into: mxfp4Blocks.pointer)
        let mxfp4Matrix = WeightMatrix(rows: rows, cols: cols, storage: .mxfp4(blocks: UnsafePointer(mxfp4Blocks.pointer)), owner: mxfp4Blocks)
        let mxfp4Rate = Double(mxfp4Blocks.count) / median { mxfp4Matrix.apply(x.pointer, rowCount: 1, into: y.pointer) } / 1e9
        // The float C kernel beside it (what `MOE_KERNELS=float` runs; `apply` takes the integer-dot one).
        let mxfp4FloatRate = Double(mxfp4Blocks.count) / median {
            MXFP4.gemv(mxfp4Blocks.pointer, rows: rows, cols: cols, x: x.pointer, count: 1, y: y.pointer)
        } / 1e9
        let maxRows = 8
        let xs = AlignedBuffer<Float>([Float](repeating: 0.5, count: maxRows * cols))
        let ys = AlignedBuffer<Float>(count: maxRows * rows)
        func rowsCost(_ matrix: WeightMatrix) -> [Double] {
            let times = (1...maxRows).map { n in median { matrix.apply(xs.pointer, rowCount: n, into: ys.pointer) } }
            return times.map { $0 / times[0] }
        }
        let q4Cost = rowsCost(q4Matrix), bf16Cost = rowsCost(bf16Matrix), mxfp4Cost = rowsCost(mxfp4Matrix)
        withExtendedLifetime((int8Scales, q4Scales, q4Halves)) {}

        var result = Result(memoryReadGBps1Thread: read1, memoryReadGBps2Threads: read2, bf16GemvGBps: bf16Rate,
                            f32SgemvGBps: f32Rate, int8GemvGBps: int8Rate, q4GemvGBps: q4Rate, bf16GemvFractionOfBandwidth: bf16Rate / max(read1, read2),
                            q4RowsCost: q4Cost, bf16RowsCost: bf16Cost, rows: rows, cols: cols)
        result.mxfp4GemvGBps = mxfp4Rate
        result.q4f16GemvGBps = q4f16Rate
        let costs = { (cost: [Double]) in cost.map { String(format: "%.2f", $0) }.joined(separator: " ") }
        let table = """
        | measurement | GB/s |
        |---|---|
        | memory read, 1 thread | \(String(format: "%.1f", read1)) |
        | memory read, 2 threads | \(String(format: "%.1f", read2)) |
        | bf16 GEMV \(rows)x\(cols) (ours) | \(String(format: "%.1f", bf16Rate)) |
        | f32 sgemv \(rows)x\(cols) (OpenBLAS) | \(String(format: "%.1f", f32Rate)) |
        | int8 GEMV \(rows)x\(cols) (ours) | \(String(format: "%.1f", int8Rate)) |
        | q4 GEMV \(rows)x\(cols) (ours) | \(String(format: "%.1f", q4Rate)) |
        | q4 GEMV \(rows)x\(cols), float16 scales (GGUF Q4_0 as served) | \(String(format: "%.1f", q4f16Rate)) |
        | MXFP4 GEMV \(rows)x\(cols) (ours) | \(String(format: "%.1f", mxfp4Rate)) |
        | MXFP4 GEMV \(rows)x\(cols), float C kernel (`MXFP4.gemv`) | \(String(format: "%.1f", mxfp4FloatRate)) |

        time of 1...\(maxRows) input rows, relative to one row:
        q4:   \(costs(q4Cost))
        bf16: \(costs(bf16Cost))
        MXFP4: \(costs(mxfp4Cost))

        """
        return (result, table)
    }

    /// Sums `count` floats with four independent SIMD accumulators (a pure read stream).
    static func sum(_ p: UnsafePointer<Float>, count: Int) -> Float {
        var a = SIMD8<Float>(), b = SIMD8<Float>(), c = SIMD8<Float>(), d = SIMD8<Float>()
        var i = 0
        let raw = UnsafeRawPointer(p)
        while i + 32 <= count {
            a += raw.load(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            b += raw.load(fromByteOffset: i * 4 + 32, as: SIMD8<Float>.self)
            c += raw.load(fromByteOffset: i * 4 + 64, as: SIMD8<Float>.self)
            d += raw.load(fromByteOffset: i * 4 + 96, as: SIMD8<Float>.self)
            i += 32
        }
        return (a + b + c + d).sum()
    }
}
