import Foundation
import TensorMath

/// Sizes the expert readers to the disk (issue 26 item 3): a short probe reads whole experts
/// at a few queue depths through the store's own reader (O_DIRECT, random blobs, bounded in
/// time and bytes), and the smallest depth within `tolerance` of the best bandwidth wins.
///
/// Why the smallest and not the fastest: a read in flight cannot be preempted, and with more
/// reads in flight each one finishes later, so a layer's first missing expert arrives later
/// and its compute starts later. Measured on the widened demo at a quarter of its experts
/// (docs/BENCHMARKS.md): 16 readers decoded 32 sequences 0.85x as fast as 4 on a disk whose
/// bandwidth does not grow past depth 4. Depth pays only where the disk gives more with it.
public enum ReaderSizing {
    /// One depth's measurement.
    public struct Sample: Sendable, Equatable, Codable {
        /// Reads kept in flight (one thread each, as the cache's readers do).
        public var depth: Int
        /// Bytes read per second at that depth.
        public var bytesPerSecond: Double
        /// Reads done.
        public var reads: Int

        /// A measurement of `reads` reads at `depth` giving `bytesPerSecond`.
        public init(depth: Int, bytesPerSecond: Double, reads: Int) {
            self.depth = depth
            self.bytesPerSecond = bytesPerSecond
            self.reads = reads
        }
    }

    /// Depths probed.
    public static let defaultDepths = [1, 2, 4, 8, 16]
    /// Experts smaller than this are not probed (their reads cost latency, not bandwidth, and
    /// the probe would take longer than it is worth): the caller keeps its default.
    public static let minimumExpertBytes = 256 << 10

    /// The smallest depth whose bandwidth is within `tolerance` (a fraction) of the best, or
    /// nil without samples.
    public static func choose(_ samples: [Sample], tolerance: Double = 0.1) -> Int? {
        guard let best = samples.map(\.bytesPerSecond).max(), best > 0 else { return nil }
        return samples.filter { $0.bytesPerSecond >= best * (1 - tolerance) }.map(\.depth).min()
    }

    /// Reads random whole experts of `store` at each of `depths` for at most `secondsPerDepth`
    /// and `bytesPerDepth` each (and at least two reads per thread); nil when the probe would
    /// say nothing (the expert file is not read with O_DIRECT, so the page cache would answer,
    /// or experts are below `minimumExpertBytes`). Each depth reads blobs the others did not.
    public static func measure(store: ExpertStore, depths: [Int] = defaultDepths, secondsPerDepth: Double = 0.12,
                               bytesPerDepth: Int = 64 << 20, minimumExpertBytes: Int = minimumExpertBytes) throws -> [Sample]? {
        let blobs = store.manifest.experts.blobs
        guard store.expertFile.usesDirectIO, !blobs.isEmpty, depths.allSatisfy({ $0 >= 1 }),
              store.expertBufferSize >= minimumExpertBytes else { return nil }
        var generator = SplitMix64(seed: 0x5EED)
        let order = blobs.shuffled(using: &generator)
        let reader = store.expertReader
        var next = 0
        var samples: [Sample] = []
        for depth in depths {
            let length = ExpertStore.roundUp(order[0].storedLength)
            let maxReads = max(2 * depth, bytesPerDepth / max(length, 1))
            let state = ProbeState(order: order, start: next, maxReads: maxReads,
                                   deadline: DispatchTime.now().uptimeNanoseconds + UInt64(secondsPerDepth * 1e9))
            let group = DispatchGroup()
            let begin = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<depth {
                group.enter()
                let thread = Thread {
                    defer { group.leave() }
                    let buffer = AlignedBuffer<UInt8>(count: store.expertBufferSize, alignment: DirectFileReader.granule)
                    while let blob = state.take(minimumPerThread: 2, threads: depth) {
                        do {
                            let got = try reader.read(into: buffer.pointer, offset: blob.offset, length: ExpertStore.roundUp(blob.storedLength))
                            state.done(bytes: got)
                        } catch {
                            state.fail(error)
                            return
                        }
                    }
                }
                thread.name = "reader-sizing"
                thread.start()
            }
            group.wait()
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - begin) / 1e9
            if let error = state.error { throw error }
            samples.append(Sample(depth: depth, bytesPerSecond: Double(state.bytes) / max(seconds, 1e-9), reads: state.reads))
            next = state.position
        }
        return samples
    }
}

/// The shared cursor of one depth's probe threads.
private final class ProbeState: @unchecked Sendable {
    private let lock = NSLock()
    private let order: [ExpertBlobEntry]
    private let maxReads: Int
    private let deadline: UInt64
    private(set) var position: Int
    private var taken = 0
    private(set) var reads = 0
    private(set) var bytes = 0
    private(set) var error: Error?

    init(order: [ExpertBlobEntry], start: Int, maxReads: Int, deadline: UInt64) {
        self.order = order
        position = start
        self.maxReads = maxReads
        self.deadline = deadline
    }

    /// The next blob to read, or nil once the probe has read enough (bytes, time) — but not
    /// before every thread has read `minimumPerThread`.
    func take(minimumPerThread: Int, threads: Int) -> ExpertBlobEntry? {
        lock.lock(); defer { lock.unlock() }
        guard error == nil, taken < maxReads else { return nil }
        if taken >= minimumPerThread * threads && DispatchTime.now().uptimeNanoseconds >= deadline { return nil }
        let blob = order[position % order.count]
        position += 1
        taken += 1
        return blob
    }

    func done(bytes got: Int) { lock.lock(); reads += 1; bytes += got; lock.unlock() }
    func fail(_ failure: Error) { lock.lock(); if error == nil { error = failure }; lock.unlock() }
}
