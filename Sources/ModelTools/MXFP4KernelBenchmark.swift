import Dispatch
import Foundation
import MoEModels
import TensorMath

/// The MXFP4 integer-dot kernel (`moe_gemm_mxfp4_q8`) at gpt-oss-20b's expert shapes, run the
/// way the engine runs experts (`moe-serve bench kernels --mxfp4`): a pool of experts, each a
/// fused gate/up matrix `[2·width, hidden]` and a down matrix `[hidden, width]` in `block_mxfp4`
/// blocks, far larger than the last-level cache so every pass streams its weights from DRAM.
///
/// Steps of up to `SparseMoEBlockLimits.parallelRowLimit` token rows spread the experts over
/// `threads` workers, each expert's products unsplit (`IntegerDotKernels.serially`), as a decode
/// step does; larger steps run the experts one at a time, each product split over the cores, as
/// a prefill chunk does. The bound beside the rates is the same threads summing the pool's bytes.
public struct MXFP4KernelBenchmark: Sendable, MedianTimed {
    /// The model's hidden size (columns of gate/up, rows of down).
    public var hidden = 2880
    /// The experts' intermediate width (gate/up has twice as many rows).
    public var width = 2880
    /// Experts in the pool: 16 of gpt-oss-20b's 13.2 MB are 211 MB, beyond any cache.
    public var experts = 16
    /// Token rows per product (one measurement each).
    public var tokenRows = [1, 2, 3, 4, 5, 6, 7, 8, 16, 64, 256]
    /// Worker threads for steps of up to 64 rows (the engine's expert workers).
    public var threads = min(2, ProcessInfo.processInfo.activeProcessorCount)
    /// Passes over the pool per measurement; the median is reported.
    public var repetitions = 7

    /// A benchmark with the defaults above (gpt-oss-20b's shapes).
    public init() {}

    /// One measurement: `tokens` rows through every expert of the pool.
    public struct Case: Encodable, Sendable {
        public var tokens: Int
        /// Threads the experts (≤ 64 rows) or each product's rows (larger) were spread over.
        public var threads: Int
        /// Median seconds of one pass over the pool.
        public var seconds: Double
        /// Bytes of MXFP4 blocks streamed per second.
        public var gbps: Double
        /// Weight × token multiply-adds per second, in billions.
        public var gmacs: Double
        /// `gbps` over the pool's read rate with the same threads.
        public var fractionOfBound: Double
        enum CodingKeys: String, CodingKey {
            case tokens, threads, seconds, gbps, gmacs, fractionOfBound = "fraction_of_bound"
        }
    }

    /// The JSON `bench kernels --mxfp4` prints.
    public struct Result: Encodable, Sendable {
        public var hidden: Int
        public var width: Int
        public var experts: Int
        public var poolBytes: Int
        /// The kernel level and variant that ran (`MXFP4.integerKernelName`).
        public var kernel: String
        /// Summing the pool's bytes with 1 and with `threads` threads (the memory bound).
        public var readGBps1Thread: Double
        public var readGBpsThreads: Double
        public var cases: [Case]
        enum CodingKeys: String, CodingKey {
            case hidden, width, experts, kernel, cases
            case poolBytes = "pool_bytes", readGBps1Thread = "read_gbps_1_thread", readGBpsThreads = "read_gbps_threads"
        }
    }

    /// Runs every measurement; returns the JSON output and a table for people.
    public func run() throws -> (result: Result, table: String) {
        guard hidden > 0, width > 0, hidden % 32 == 0, width % 32 == 0, experts > 0, threads > 0, repetitions > 0,
              !tokenRows.isEmpty, tokenRows.allSatisfy({ $0 > 0 }) else {
            throw ToolError("the MXFP4 benchmark needs positive sizes, multiples of 32, and positive token rows")
        }
        guard let level = IntegerDotKernels.level else {
            throw ToolError("MOE_KERNELS=float: the MXFP4 benchmark measures the integer-dot kernel")
        }
        let gateUpBytes = MXFP4.byteCount(rows: 2 * width, cols: hidden), downBytes = MXFP4.byteCount(rows: hidden, cols: width)
        let expertBytes = gateUpBytes + downBytes
        // [experts][gate/up blocks, down blocks]: random codes, exponents 118...125 (scales 2^-9...2^-2, gpt-oss's range).
        let pool = AlignedBuffer<UInt8>(count: experts * expertBytes, zeroed: false)
        var generator = SplitMix64(seed: 23)
        for i in stride(from: 0, to: pool.count - 7, by: 8) {
            UnsafeMutableRawPointer(pool.pointer + i).storeBytes(of: generator.next(), as: UInt64.self)
        }
        for b in stride(from: 0, to: pool.count, by: MXFP4.blockBytes) { pool[b] = 118 + pool[b] % 8 }
        // gate/up and down blocks both start on block boundaries (expertBytes is a multiple of 17).
        let maxTokens = tokenRows.max()!
        let x = AlignedBuffer<Float>(count: maxTokens * max(hidden, width), zeroed: false)
        for i in 0..<x.count { x[i] = Float(Int(generator.next() % 2001) - 1000) * 1e-3 }
        let outputCount = maxTokens * 2 * width
        let outputs = (0..<max(threads, 1)).map { _ in AlignedBuffer<Float>(count: outputCount) }

        let poolFloats = pool.count / 4
        let read1 = Double(poolFloats * 4) / median { _ = KernelBenchmark.sum(UnsafeRawPointer(pool.pointer).assumingMemoryBound(to: Float.self), count: poolFloats) } / 1e9
        let readThreads = threads
        let readN = Double(poolFloats * 4) / median {
            let per = poolFloats / readThreads
            DispatchQueue.concurrentPerform(iterations: readThreads) { part in
                _ = KernelBenchmark.sum(UnsafeRawPointer(pool.pointer).assumingMemoryBound(to: Float.self) + part * per, count: per)
            }
        } / 1e9

        let (hidden, width, experts, threads) = (self.hidden, self.width, self.experts, self.threads)
        let shared = UncheckedSendable((UnsafePointer(pool.pointer), UnsafePointer(x.pointer), outputs.map(\.pointer)))
        // Expert e's two products for `n` rows into worker `w`'s output.
        @Sendable func expert(_ e: Int, _ n: Int, _ w: Int) {
            let (blocks, x, ys) = shared.value
            let base = blocks + e * expertBytes
            IntegerDotKernels.mxfp4(base, rows: 2 * width, cols: hidden, x: x, count: n, y: ys[w], level: level)
            IntegerDotKernels.mxfp4(base + gateUpBytes, rows: hidden, cols: width, x: x, count: n, y: ys[w], level: level)
        }
        var cases: [Case] = []
        for n in tokenRows {
            let seconds: Double
            let used: Int
            if n <= SparseMoEBlockLimits.parallelRowLimit && threads > 1 {
                used = threads
                seconds = median {
                    DispatchQueue.concurrentPerform(iterations: threads) { w in
                        IntegerDotKernels.serially {
                            for e in stride(from: w, to: experts, by: threads) { expert(e, n, w) }
                        }
                    }
                }
            } else {
                used = n <= SparseMoEBlockLimits.parallelRowLimit ? 1 : ProcessInfo.processInfo.activeProcessorCount
                seconds = median { for e in 0..<experts { expert(e, n, 0) } }
            }
            let rate = Double(pool.count) / seconds / 1e9
            let macs = Double(experts * 3 * width * hidden * n) / seconds / 1e9
            cases.append(Case(tokens: n, threads: used, seconds: seconds, gbps: rate, gmacs: macs, fractionOfBound: rate / (used > 1 ? readN : read1)))
        }
        withExtendedLifetime((pool, x, outputs)) {}

        let kernel = MXFP4.integerKernelName(level: level)
        let result = Result(hidden: hidden, width: width, experts: experts, poolBytes: pool.count, kernel: kernel,
                            readGBps1Thread: read1, readGBpsThreads: readN, cases: cases)
        var table = """
        MXFP4 experts (gate/up \(2 * width)x\(hidden), down \(hidden)x\(width)), \(experts) experts = \(String(format: "%.1f", Double(pool.count) / 1e6)) MB, kernel \(kernel)
        memory read of the pool: \(String(format: "%.1f", read1)) GB/s (1 thread), \(String(format: "%.1f", readN)) GB/s (\(threads) threads)
        | token rows | threads | ms per pass | GB/s | GMAC/s | of bound |
        |---|---|---|---|---|---|

        """
        for c in cases {
            table += "| \(c.tokens) | \(c.threads) | \(String(format: "%.2f", c.seconds * 1e3)) | \(String(format: "%.1f", c.gbps)) | "
                + "\(String(format: "%.1f", c.gmacs)) | \(String(format: "%.2f", c.fractionOfBound)) |\n"
        }
        return (result, table)
    }
}
