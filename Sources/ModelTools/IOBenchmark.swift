import Foundation
import ModelFormats
import TensorMath

/// The I/O ceiling the expert cache works under (`moe-serve bench io --model STORE`).
///
/// Measures, in one run: sequential `O_DIRECT` bandwidth of experts.bin in 4 MiB blocks (what
/// `dd iflag=direct bs=4M` reports), random whole-expert `O_DIRECT` reads at each queue depth
/// with both engines — the thread-pool reader (one thread per outstanding read, `random_direct`)
/// and io_uring (one submitting thread keeping that many reads in flight into registered
/// buffers, `random_direct_io_uring`), each the median of `rounds` rounds — the full
/// `readExpert` path (read + checksum + decode) at queue depth 1, and the same random reads
/// served from the page cache.
public struct IOBenchmark: Sendable {
    /// The packed store whose experts.bin is read.
    public var store: URL
    /// Random expert reads per measurement.
    public var reads: Int = 256
    /// Queue depths (threads) of the random reads, each 1...256.
    public var queueDepths: [Int] = [1, 4, 16, 32]
    /// Rounds of the random O_DIRECT reads per engine and depth; the median round is reported.
    public var rounds: Int = 3
    /// MiB of experts.bin to read sequentially (capped at the file size).
    public var sequentialMiB: Int = 2048
    /// Seed of the random expert order.
    public var seed: UInt64 = 1

    /// Measures the store at `store` with the default settings (change the members to vary them).
    public init(store: URL) { self.store = store }

    /// One measurement: a read mode at one queue depth.
    public struct Measurement: Encodable, Sendable {
        public var mode: String
        public var queueDepth: Int
        public var reads: Int
        public var bytes: Int
        public var seconds: Double
        public var gbps: Double
        public var medianMs: Double
        public var p99Ms: Double
        enum CodingKeys: String, CodingKey {
            case mode, reads, bytes, seconds, gbps
            case queueDepth = "queue_depth", medianMs = "median_ms", p99Ms = "p99_ms"
        }
    }

    /// The JSON `bench io` prints.
    public struct Output: Encodable, Sendable {
        public var store: String
        public var directIO: Bool
        public var expertStoredBytes: Int
        public var experts: Int
        public var expertsFileBytes: Int
        public var measurements: [Measurement]
        enum CodingKeys: String, CodingKey {
            case store, experts, measurements
            case directIO = "direct_io", expertStoredBytes = "expert_stored_bytes", expertsFileBytes = "experts_file_bytes"
        }
    }

    /// Runs every measurement; returns the JSON output and a table for people.
    public func run() throws -> (output: Output, table: String) {
            let url = self.store
            guard reads > 0 else { throw ToolError("--reads must be positive") }
            guard sequentialMiB > 0 else { throw ToolError("--sequential-mib must be positive") }
            guard rounds > 0 else { throw ToolError("--rounds must be positive") }
            guard ExpertStore.isStore(at: url) else { throw ToolError("\(url.path): bench io needs a packed store (run moe-serve pack first)") }
            let store = try ExpertStore(url: url)
            let depths = queueDepths
            guard depths.allSatisfy({ $0 >= 1 && $0 <= 256 }) else { throw ToolError("--queue-depths: each must be between 1 and 256") }
            let blobs = store.manifest.experts.blobs
            guard !blobs.isEmpty else { throw ToolError("\(url.path): the store has no experts") }
            var rng = SplitMix64(seed: seed)
            let order = (0..<reads).map { _ in blobs[Int(rng.next() % UInt64(blobs.count))] }
            let expertsPath = url.appendingPathComponent(store.manifest.experts.file).path
            var results: [Measurement] = []

            // Sequential, dd-style.
            results.append(try sequential(path: expertsPath, limit: min(sequentialMiB << 20, store.manifest.experts.fileSize)))
            // Random O_DIRECT whole-expert reads, both engines, rounds interleaved so that drift
            // of the disk hits both alike; the median round of each is kept.
            let direct = try DirectFileReader(path: expertsPath)
            Self.dropCache(expertsPath)
            let directMode = direct.usesDirectIO ? "random_direct" : "random_buffered_dontneed"
            var uring: UringFileReader?
            do { uring = try UringFileReader(file: direct, entries: max(64, (depths.max() ?? 1) + 1)) } catch {
                printError("bench io: \(error); measuring the thread-pool reader only")
            }
            // One buffer per read in flight at the largest depth, registered once (fixed buffers).
            let maxLength = ExpertStore.roundUp(order.map(\.storedLength).max() ?? 0)
            let uringBuffers = uring.map { UringBuffers(reader: $0, count: depths.max() ?? 1, length: maxLength) }
            for depth in depths {
                var threadRounds: [Measurement] = [], uringRounds: [Measurement] = []
                for _ in 0..<rounds {
                    threadRounds.append(try Self.random(order: order, depth: depth, mode: directMode) { entry, buffer in
                        _ = try direct.read(into: buffer, offset: entry.offset, length: ExpertStore.roundUp(entry.storedLength))
                    })
                    if let uring {
                        uringRounds.append(try Self.randomUring(order: order, depth: depth, reader: uring, buffers: uringBuffers!, mode: directMode + "_io_uring"))
                    }
                }
                results.append(Self.median(threadRounds))
                if !uringRounds.isEmpty { results.append(Self.median(uringRounds)) }
            }
            // The whole reader path: O_DIRECT read + checksum + decode.
            results.append(try Self.random(order: order, depth: 1, mode: "read_expert_checked") { entry, _ in
                _ = try store.readExpert(layer: entry.layer, expert: entry.expert)
            })
            // Page cache: warm the touched blobs, then read them again buffered.
            let cached = try DirectFileReader(path: expertsPath, direct: false, keepPageCache: true)
            let distinct = Dictionary(order.map { ($0.offset, $0) }, uniquingKeysWith: { first, _ in first }).values.sorted { $0.offset < $1.offset }
            _ = try Self.random(order: distinct, depth: 1, mode: "warm") { entry, buffer in
                _ = try cached.read(into: buffer, offset: entry.offset, length: ExpertStore.roundUp(entry.storedLength))
            }
            for depth in depths {
                results.append(try Self.random(order: order, depth: depth, mode: "random_page_cache") { entry, buffer in
                    _ = try cached.read(into: buffer, offset: entry.offset, length: ExpertStore.roundUp(entry.storedLength))
                })
            }
            cached.dropPageCache()

            let storedMean = blobs.reduce(0) { $0 + $1.storedLength } / blobs.count
            var table = "bench io: \(url.path), \(blobs.count) experts of \(String(format: "%.2f", Double(storedMean) / 1e6)) MB, O_DIRECT \(direct.usesDirectIO ? "yes" : "no")\n"
            table += "mode                      QD   reads   GB/s   median ms   p99 ms\n"
            for m in results {
                let mode = m.mode.padding(toLength: 24, withPad: " ", startingAt: 0)
                table += mode + String(format: " %4d %7d %6.2f %11.2f %8.2f\n", m.queueDepth, m.reads, m.gbps, m.medianMs, m.p99Ms)
            }
            return (Output(store: url.path, directIO: direct.usesDirectIO, expertStoredBytes: storedMean, experts: blobs.count,
                           expertsFileBytes: store.manifest.experts.fileSize, measurements: results), table)
    }

    /// The round with the median bandwidth.
    static func median(_ rounds: [Measurement]) -> Measurement {
        rounds.sorted { $0.gbps < $1.gbps }[rounds.count / 2]
    }

    /// Runs `order` through `reader` from this one thread, keeping `depth` whole-expert reads
    /// in flight, each into its own buffer (registered with the ring when the kernel allows:
    /// every read is then a `READ_FIXED`). The reader needs more than `depth` ring entries.
    static func randomUring(order: [ExpertBlobEntry], depth: Int, reader: UringFileReader, buffers: UringBuffers, mode: String) throws -> Measurement {
        precondition(reader.entries > depth)
        let lock = NSLock()
        nonisolated(unsafe) var free = Array(0..<depth)
        nonisolated(unsafe) var latencies: [Double] = []
        nonisolated(unsafe) var failure: Int32?
        let slots = DispatchSemaphore(value: depth)
        let group = DispatchGroup()
        let start = now()
        for entry in order {
            slots.wait()
            lock.lock(); let slot = free.removeLast(); lock.unlock()
            let t0 = now()
            group.enter()
            reader.submit(into: buffers.pointer(slot), offset: entry.offset, length: ExpertStore.roundUp(entry.storedLength)) { result in
                let elapsed = now() - t0
                lock.lock()
                if case let .failure(error) = result { failure = error.code }
                latencies.append(elapsed)
                free.append(slot)
                lock.unlock()
                slots.signal()
                group.leave()
            }
        }
        group.wait()
        let seconds = now() - start
        if let failure { throw ToolError("bench io: io_uring read failed: \(String(cString: strerror(failure)))") }
        let bytes = order.reduce(0) { $0 + ExpertStore.roundUp($1.storedLength) }
        return summarize(mode: mode, depth: depth, bytes: bytes, seconds: seconds, latencies: latencies)
    }

    /// Reads the first `limit` bytes of `path` with O_DIRECT in 4 MiB blocks.
    private func sequential(path: String, limit: Int) throws -> Measurement {
        let file = try DirectFileReader(path: path)
        Self.dropCache(path)
        let block = 4 << 20
        let buffer = AlignedBuffer<UInt8>(count: block, alignment: DirectFileReader.granule)
        var offset = 0, latencies: [Double] = []
        let start = now()
        while offset < limit {
            let t = now()
            let got = try file.read(into: buffer.pointer, offset: offset, length: block)
            latencies.append(now() - t)
            if got == 0 { break }
            offset += got
        }
        return Self.summarize(mode: file.usesDirectIO ? "sequential_direct_4MiB" : "sequential_buffered_4MiB", depth: 1, bytes: offset, seconds: now() - start, latencies: latencies)
    }

    /// Runs `order` spread over `depth` threads, each with its own aligned buffer.
    public static func random(order: [ExpertBlobEntry], depth: Int, mode: String,
                        read: @escaping @Sendable (ExpertBlobEntry, UnsafeMutableRawPointer) throws -> Void) throws -> Measurement {
        let maxLength = ExpertStore.roundUp(order.map(\.storedLength).max() ?? 0)
        let lock = NSLock()
        nonisolated(unsafe) var latencies: [Double] = []
        nonisolated(unsafe) var failure: Error?
        let group = DispatchGroup()
        let start = now()
        let work = order
        for t in 0..<depth {
            group.enter()
            let thread = Thread {
                let buffer = AlignedBuffer<UInt8>(count: maxLength, alignment: DirectFileReader.granule)
                var mine: [Double] = []
                var i = t
                while i < work.count {
                    let t0 = now()
                    do { try read(work[i], buffer.pointer) } catch {
                        lock.lock(); failure = error; lock.unlock(); break
                    }
                    mine.append(now() - t0)
                    i += depth
                }
                lock.lock(); latencies += mine; lock.unlock()
                group.leave()
            }
            thread.start()
        }
        group.wait()
        let seconds = now() - start
        if let failure { throw failure }
        let bytes = order.reduce(0) { $0 + ExpertStore.roundUp($1.storedLength) }
        return summarize(mode: mode, depth: depth, bytes: bytes, seconds: seconds, latencies: latencies)
    }

    public static func summarize(mode: String, depth: Int, bytes: Int, seconds: Double, latencies: [Double]) -> Measurement {
        let sorted = latencies.sorted()
        func quantile(_ q: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))] * 1000 }
        return Measurement(mode: mode, queueDepth: depth, reads: latencies.count, bytes: bytes, seconds: seconds,
                           gbps: Double(bytes) / max(seconds, 1e-9) / 1e9, medianMs: quantile(0.5), p99Ms: quantile(0.99))
    }

    /// Evicts `path` from the page cache so that nothing measured comes from RAM.
    public static func dropCache(_ path: String) {
        let fd = open(path, O_RDONLY)
        if fd >= 0 { _ = posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_DONTNEED)); close(fd) }
    }
}

/// One 4 KiB-aligned buffer per ring slot for `bench io`'s io_uring reads, registered with the
/// ring once (fixed buffers) when the kernel allows it.
final class UringBuffers: @unchecked Sendable {
    private let storage: AlignedBuffer<UInt8>
    private let length: Int

    /// `count` buffers of `length` bytes, registered with `reader`'s ring if it allows.
    init(reader: UringFileReader, count: Int, length: Int) {
        self.length = length
        storage = AlignedBuffer<UInt8>(count: count * length, alignment: DirectFileReader.granule)
        let regions = (0..<count).map { UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(storage.pointer + $0 * length), count: length) }
        do { try reader.registerBuffers(regions) } catch { printError("bench io: \(error); io_uring reads stay unregistered") }
    }

    /// Slot `index`'s buffer.
    func pointer(_ index: Int) -> UnsafeMutableRawPointer { UnsafeMutableRawPointer(storage.pointer + index * length) }
}
