/// The I/O engine's queue as a pure state machine: two priorities (every queued demand read
/// starts before any prefetch read), promotion of a queued prefetch to demand, cancellation
/// of reads not yet started, a bound on bytes in flight, and a bound on prefetch reads in
/// flight. The cache drives it under its lock; reader threads take jobs from it.
///
/// Why bound prefetches separately: a read in flight cannot be preempted, and on a disk whose
/// bandwidth does not grow with queue depth every prefetch read running beside a demand read
/// slows it. With fewer prefetch slots than readers a demand always finds a free reader and
/// shares the disk with at most `maxInFlightPrefetches` guesses.
public struct ReadQueue: Sendable {
    /// Demand reads block a request; prefetch reads are hints.
    public enum Priority: String, Sendable, Equatable {
        /// Someone is waiting for it.
        case demand
        /// A guess that it will be wanted.
        case prefetch
    }

    /// A read handed to a reader.
    public struct Job: Sendable, Equatable {
        /// Which expert.
        public var key: ExpertKey
        /// Its size.
        public var bytes: Int
        /// Its priority when it started.
        public var priority: Priority
    }

    /// Reads may start while fewer than this many bytes are in flight (one read always may).
    public let maxInFlightBytes: Int
    /// Prefetch reads that may run at once (demand reads are not limited by it).
    public let maxInFlightPrefetches: Int
    /// Bytes of started, unfinished reads.
    public private(set) var inFlightBytes = 0
    /// Started, unfinished reads that started as prefetches.
    public private(set) var inFlightPrefetches = 0
    private var queued: [ExpertKey: (bytes: Int, priority: Priority)] = [:]
    private var started: Set<ExpertKey> = []
    // FIFO lists with lazy deletion: an entry is live only while `queued` still holds its key
    // with the list's priority (promotion and cancellation leave stale entries behind).
    private var demandOrder = FIFO()
    private var prefetchOrder = FIFO()

    /// An empty queue allowing `maxInFlightBytes` in flight, of which at most
    /// `maxInFlightPrefetches` prefetch reads (default: no separate bound).
    public init(maxInFlightBytes: Int, maxInFlightPrefetches: Int = .max) {
        precondition(maxInFlightBytes > 0 && maxInFlightPrefetches > 0)
        self.maxInFlightBytes = maxInFlightBytes
        self.maxInFlightPrefetches = maxInFlightPrefetches
    }

    /// Whether `key` waits to start.
    public func isQueued(_ key: ExpertKey) -> Bool { queued[key] != nil }
    /// Whether `key`'s read is running.
    public func isStarted(_ key: ExpertKey) -> Bool { started.contains(key) }
    /// The priority `key` waits with, if queued.
    public func priority(of key: ExpertKey) -> Priority? { queued[key]?.priority }
    /// Reads waiting to start.
    public var queuedCount: Int { queued.count }
    /// Queued prefetch reads, oldest first.
    public var queuedPrefetches: [ExpertKey] {
        prefetchOrder.items.filter { queued[$0]?.priority == .prefetch }
    }

    /// Queues a read of `key` (neither queued nor started).
    public mutating func enqueue(_ key: ExpertKey, bytes: Int, priority: Priority) {
        precondition(queued[key] == nil && !started.contains(key), "\(key) is already queued or reading")
        queued[key] = (bytes, priority)
        switch priority {
        case .demand: demandOrder.push(key)
        case .prefetch: prefetchOrder.push(key)
        }
    }

    /// Moves a queued prefetch of `key` to the demand queue (behind earlier demands); true if
    /// it was a queued prefetch. A started read cannot be promoted; it just finishes.
    @discardableResult
    public mutating func promote(_ key: ExpertKey) -> Bool {
        guard let entry = queued[key], entry.priority == .prefetch else { return false }
        queued[key] = (entry.bytes, .demand)
        demandOrder.push(key)
        return true
    }

    /// Drops `key`'s read if it has not started; true if it was dropped.
    @discardableResult
    public mutating func cancel(_ key: ExpertKey) -> Bool {
        queued.removeValue(forKey: key) != nil
    }

    /// The next read to start — the oldest demand, else the oldest prefetch — unless the
    /// in-flight bounds forbid it or `canStart` refuses it (the cache could not make its room
    /// yet: it stays first in line and nothing behind it starts); it counts as in flight until `finish`.
    public mutating func nextJob(startingIf canStart: (Job) -> Bool = { _ in true }) -> Job? {
        for priority in [Priority.demand, .prefetch] {
            if priority == .prefetch && inFlightPrefetches >= maxInFlightPrefetches { return nil }
            while let key = (priority == .demand ? demandOrder.peek() : prefetchOrder.peek()) {
                guard let entry = queued[key], entry.priority == priority else {
                    _ = priority == .demand ? demandOrder.pop() : prefetchOrder.pop()
                    continue
                }
                if inFlightBytes > 0 && inFlightBytes + entry.bytes > maxInFlightBytes { return nil }
                guard canStart(Job(key: key, bytes: entry.bytes, priority: priority)) else { return nil }
                _ = priority == .demand ? demandOrder.pop() : prefetchOrder.pop()
                queued[key] = nil
                started.insert(key)
                inFlightBytes += entry.bytes
                if priority == .prefetch { inFlightPrefetches += 1 }
                return Job(key: key, bytes: entry.bytes, priority: priority)
            }
        }
        return nil
    }

    /// `job`'s read ended (successfully or not).
    public mutating func finish(_ job: Job) {
        precondition(started.remove(job.key) != nil, "\(job.key) was not reading")
        inFlightBytes -= job.bytes
        if job.priority == .prefetch { inFlightPrefetches -= 1 }
    }
}

/// An array-backed FIFO that compacts itself now and then.
private struct FIFO: Sendable {
    private var storage: [ExpertKey] = []
    private var head = 0

    var items: ArraySlice<ExpertKey> { storage[head...] }

    mutating func push(_ key: ExpertKey) { storage.append(key) }

    func peek() -> ExpertKey? { head < storage.count ? storage[head] : nil }

    mutating func pop() -> ExpertKey? {
        guard head < storage.count else { return nil }
        defer {
            head += 1
            if head > 256 && head * 2 > storage.count {
                storage.removeFirst(head)
                head = 0
            }
        }
        return storage[head]
    }
}
