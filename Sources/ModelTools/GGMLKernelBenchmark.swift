import Dispatch
import Foundation
import TensorMath

/// GEMV throughput of the ggml block types on their integer-dot kernels against the float path
/// they had before (`GGMLKernels.multiRow`: each row decoded to float, float SIMD), each with its
/// own split over the cores as `WeightMatrix.apply` runs it (`moe-serve bench kernels --ggml`; issue 21 item 2).
public struct GGMLKernelBenchmark: Sendable, MedianTimed {
    /// Rows of the test matrix.
    public var rows = 4096
    /// Columns (a multiple of 256, so that every type fits).
    public var cols = 4096
    /// Repetitions; the median is reported.
    public var repetitions = 15
    /// The types measured.
    public var types: [GGMLType] = IntegerDotKernels.ggml32Types + IntegerDotKernels.ggmlSuperBlockTypes

    /// A benchmark of `types` at `rows` × `cols`.
    public init(rows: Int = 4096, cols: Int = 4096, repetitions: Int = 15) {
        self.rows = rows
        self.cols = cols
        self.repetitions = repetitions
    }

    /// The ggml type named `name` among the benchmarked ones (`q4_1`, `iq4_nl`, ...), case-insensitive.
    public static func type(named name: String) -> GGMLType? {
        (IntegerDotKernels.ggml32Types + IntegerDotKernels.ggmlSuperBlockTypes).first { $0.description.lowercased() == name.lowercased() }
    }

    /// One type's figures: GB/s of blocks streamed by one 1-row product, and a batch of 8 rows' time relative to one row.
    public struct Row: Encodable, Sendable {
        public var type: String
        public var integerGBps: Double
        public var floatGBps: Double
        public var integerRows8Cost: Double
        public var floatRows8Cost: Double
        /// Milliseconds of one `WeightMatrix.apply` of 64 token rows (a prefill chunk): the integer
        /// kernel, or under `MOE_GGUF_BLOCKS=float` the float path's sgemm panels.
        public var apply64RowsMs: Double
        enum CodingKeys: String, CodingKey {
            case apply64RowsMs = "apply_64_rows_ms"
            case type, integerGBps = "integer_gbps", floatGBps = "float_gbps"
            case integerRows8Cost = "integer_8_rows_cost", floatRows8Cost = "float_8_rows_cost"
        }
    }

    /// Runs the measurements; the JSON rows and a table.
    public func run() throws -> (result: [Row], table: String) {
        guard rows > 0, cols > 0, cols % GGMLType.superBlock == 0, repetitions > 0 else {
            throw ToolError("--rows and --repetitions must be positive and --cols a positive multiple of \(GGMLType.superBlock) with --ggml")
        }
        guard let level = IntegerDotKernels.level else { throw ToolError("--ggml needs the integer kernels (MOE_KERNELS is float)") }
        let x = AlignedBuffer<Float>((0..<(64 * cols)).map { Float(($0 * 7919) % 1000) / 500 - 1 })
        let y = AlignedBuffer<Float>(count: 64 * rows)
        var result: [Row] = []
        var table = "| type | integer kernel (\(level.name)) GB/s | float path GB/s | speed-up | 8 rows / 1 row: integer, float | apply of 64 rows, ms |\n|---|---|---|---|---|---|\n"
        for type in types {
            let bytes = rows * (type.byteCount(elements: cols) ?? 0)
            let blocks = AlignedBuffer<UInt8>(count: bytes)
            var state: UInt64 = 1
            for i in 0..<bytes { state = state &* 6364136223846793005 &+ 1442695040888963407; blocks[i] = UInt8(truncatingIfNeeded: state >> 33) }
            // Small positive float16 scales (0x1400 ≈ 0.001) where each type keeps them, so no product meets inf/NaN.
            for b in stride(from: 0, to: bytes, by: type.blockBytes) {
                let at = type == .q3_K ? b + 108 : b
                blocks[at] = 0; blocks[at + 1] = 0x14
                if type == .q4_1 || type == .q5_1 { blocks[at + 2] = 0; blocks[at + 3] = 0x14 }
            }
            let w = UnsafePointer(blocks.pointer)
            let matrix = WeightMatrix(rows: rows, cols: cols, storage: .ggml(type: type, blocks: w), owner: blocks)
            let integer = { (n: Int) in median { matrix.apply(x.pointer, rowCount: n, into: y.pointer) } }
            let float = { (n: Int) in median { GGMLKernels.multiRow(type, w, rows: rows, cols: cols, x: x.pointer, count: n, y: y.pointer) } }
            let (i1, i8, f1, f8, i64) = (integer(1), integer(8), float(1), float(8), integer(64))
            let row = Row(type: type.description, integerGBps: Double(bytes) / i1 / 1e9, floatGBps: Double(bytes) / f1 / 1e9,
                          integerRows8Cost: i8 / i1, floatRows8Cost: f8 / f1, apply64RowsMs: i64 * 1e3)
            result.append(row)
            table += "| \(type) \(rows)x\(cols) | \(String(format: "%.2f", row.integerGBps)) | \(String(format: "%.2f", row.floatGBps)) | "
                + "\(String(format: "%.1fx", f1 / i1)) | \(String(format: "%.2f", row.integerRows8Cost)), \(String(format: "%.2f", row.floatRows8Cost)) | \(String(format: "%.1f", row.apply64RowsMs)) |\n"
        }
        return (result, table)
    }
}
