import Foundation
import ModelFormats
import TensorMath

/// The runtime expert cache: an `ExpertProvider` that keeps a byte-budgeted set of experts
/// in RAM and reads the rest through an `ExpertLoader` on a pool of reader threads.
///
/// - `withExperts` pins the resident experts and hands them to `body` first, while every
///   missing expert of the call is queued at once (so the disk sees a queue depth above one);
///   loaded experts are handed over as their reads finish. An expert is unpinned as soon as
///   `body` is done with it. Concurrent requests for the same missing expert share one read.
/// - Demand reads start before any prefetch read; a request for a queued prefetch promotes
///   it; queued prefetches can be cancelled, and are cancelled when a demand needs their room.
/// - Bytes held (resident plus being read) never exceed the budget; pinned experts are never
///   evicted; each layer keeps a floor of `floorSlots` experts against other layers.
/// - A failed read fails the `withExperts` calls waiting for it (the error propagates to the
///   request); the cache stays usable and a later request retries the read.
///
/// Reader threads run until `close()`; call it before dropping the cache.
public final class OffloadingExpertCache: ExpertProvider, @unchecked Sendable {
    /// How the cache is set up.
    public struct Configuration: Sendable {
        /// Bytes of experts the cache may hold.
        public var budgetBytes: Int
        /// Experts per layer protected from other layers' evictions (at least the model's top-k).
        public var floorSlots: Int
        /// Reader threads (the I/O queue depth).
        public var readerThreads: Int
        /// Bytes of reads in flight at most (one read always may start).
        public var maxInFlightBytes: Int
        /// Bytes of prefetched, not yet used experts one layer may hold (nil: no bound); see
        /// `CacheBookkeeping`.
        public var speculativeLayerBytes: Int?
        /// Prefetch reads that may run at once (nil: as many as there are readers); see `ReadQueue`.
        public var maxInFlightPrefetches: Int?
        /// Missing experts one `withExperts` call holds reserved (queued, loading, or loaded and
        /// not yet handed to a worker) at once; nil reserves every miss at once. A large batch
        /// misses most of a layer (32 sequences: ~19 of 32 experts at a quarter budget), and
        /// reserving them all evicts other layers' hot experts to make room for reads the disk
        /// serves one after another anyway; a window a little deeper than the readers is meant to
        /// keep the disk busy and the hot set resident. Measured with 8 (docs/BENCHMARKS.md,
        /// "Throughput mode"): hit rate 0.077 -> 0.095 at 32 sequences, no speed gain; off by default.
        /// A window reserves room when a miss is queued, so it turns `roomAtRead` off unless that is given.
        public var admissionWindow: Int?
        /// Whether a demand miss is queued at once and its room made when its read starts
        /// (`CacheBookkeeping.reserveLater`), rather than reserved when it is queued. A batch
        /// step misses most of a layer; reserving the whole union at once takes its room out of
        /// the other layers, while room made at the read's start comes from the step's own
        /// finished experts once there are some (docs/expert-cache.md, "Room made when the read
        /// starts"). An admission window does not apply then.
        public var roomAtRead: Bool

        /// `roomAtRead` unless set: on, and off under `MOE_ROOM_AT_READ=off` (an A/B switch).
        public static let roomAtReadByDefault = ProcessInfo.processInfo.environment["MOE_ROOM_AT_READ"] != "off"

        /// A cache of `budgetBytes` with floors of `floorSlots`, `readerThreads` readers and
        /// at most `maxInFlightBytes` in flight (default: unbounded but for the budget).
        public init(budgetBytes: Int, floorSlots: Int, readerThreads: Int = 4, maxInFlightBytes: Int? = nil,
                    speculativeLayerBytes: Int? = nil, maxInFlightPrefetches: Int? = nil, admissionWindow: Int? = nil,
                    roomAtRead: Bool? = nil) {
            precondition(admissionWindow.map { $0 >= 1 } ?? true)
            self.admissionWindow = admissionWindow
            self.roomAtRead = roomAtRead ?? (admissionWindow == nil && Self.roomAtReadByDefault)
            self.budgetBytes = budgetBytes
            self.floorSlots = floorSlots
            self.readerThreads = readerThreads
            self.maxInFlightBytes = maxInFlightBytes ?? max(budgetBytes, 1)
            self.speculativeLayerBytes = speculativeLayerBytes
            self.maxInFlightPrefetches = maxInFlightPrefetches
        }
    }

    /// One read's outcome, shared by everyone waiting for it. Guarded by the cache's lock.
    private final class LoadTicket {
        var result: Result<ExpertWeights, Error>?
        /// A split read's early copy (`ExpertWeights.rest` set), from the moment its gate and up
        /// matrices are in memory until `result` is set.
        var early: ExpertWeights?
        /// Requests that took `early`: their uses are recorded once the expert is resident.
        var earlyUses = 0
        /// Whether a request that takes early copies waits on this read (the reader then wakes
        /// requesters when the early copy is ready, and not otherwise).
        var earlyWanted = false
        init(result: Result<ExpertWeights, Error>? = nil) { self.result = result }
    }

    private let loader: any ExpertLoader
    private let configuration: Configuration
    /// Guards everything below; readers wait on it for work, requesters for progress.
    private let lock = CacheLock()
    private var book: CacheBookkeeping
    private var queue: ReadQueue
    private var weights: [ExpertKey: ExpertWeights] = [:]
    private var tickets: [ExpertKey: LoadTicket] = [:]
    private var counters: [ExpertCacheCounters?] = []
    private var closed = false
    /// When each queued demand read was queued (or its prefetch promoted), for `demandQueuedSeconds`.
    private var demandQueuedAt: [ExpertKey: UInt64] = [:]
    /// Reads running now, since when at least one has been, and the busy time before that.
    private var readsRunning = 0
    private var busySince: UInt64 = 0
    private var busyNanoseconds: UInt64 = 0
    /// Set when a reader left the first queued read waiting for room it could not make yet;
    /// the next release of room then wakes a reader (`wakeForRoomLocked`).
    private var readerAwaitsRoom = false
    /// The least budget: every layer's floor of the largest expert.
    public let minimumBudgetBytes: Int
    /// The low-bit copies' own pool (`enableLowBitMisses`), nil while they are off. Its keys,
    /// and theirs in `weights`, `tickets` and `queue`, are `lowBitKey`s (negative expert indices).
    private var lowBook: CacheBookkeeping?
    /// The share of the budget the low-bit pool takes.
    private var lowBitShare = 0.0
    /// Set by `disablePrefetches`: `prefetch` does nothing. Lock held.
    private var prefetchesDisabled = false
    private var precision = LowBitPrecision()
    private let layerList: [Int]

    /// Starts a cache over `loader` with `policy`. Throws when the budget cannot hold the
    /// floors of `layers` (the MoE layers it will serve), since requests could then deadlock.
    public init(loader: any ExpertLoader, policy: any CachePolicy, configuration: Configuration, layers: [Int]) throws {
        precondition(configuration.readerThreads > 0)
        let largest = layers.map { loader.expertByteCount(layer: $0, expert: 0) }.max() ?? 0
        let floors = layers.count * configuration.floorSlots * largest
        guard configuration.budgetBytes >= max(floors, largest) else {
            throw ExpertCacheError("the expert cache budget of \(configuration.budgetBytes) bytes cannot hold \(configuration.floorSlots) experts of \(largest) bytes for each of \(layers.count) layers (\(floors) bytes)")
        }
        self.loader = loader
        self.configuration = configuration
        layerList = layers
        minimumBudgetBytes = max(floors, largest)
        book = CacheBookkeeping(budgetBytes: configuration.budgetBytes, floorSlots: configuration.floorSlots,
                                speculativeLayerBytes: configuration.speculativeLayerBytes, policy: policy)
        queue = ReadQueue(maxInFlightBytes: configuration.maxInFlightBytes,
                          maxInFlightPrefetches: configuration.maxInFlightPrefetches ?? .max)
        for index in 0..<configuration.readerThreads {
            let thread = Thread { [self] in readerLoop() }
            thread.name = "expert-reader-\(index)"
            thread.start()
        }
    }

    /// One MoE layer's routing of a step (`routes[row]`, as the router chose them) and which
    /// sequence each row belongs to, for an eviction policy that models the running sequences
    /// (`CachePolicy.sequence(_:routedTo:layer:)`; the others ignore it). One lock per layer and
    /// step; the rows' expert lists are passed as they are, without copies.
    public func noteSequenceRouting(layer: Int, sequences: [SequenceRows], routes: [TokenRouting]) {
        lock.lock()
        defer { lock.unlock() }
        for sequence in sequences {
            for row in sequence.rows where row < routes.count {
                book.policy.sequence(sequence.id, routedTo: routes[row].experts, layer: layer)
            }
        }
    }

    /// `body` applied to the eviction policy, under the cache's lock (diagnostics and tests).
    public func withPolicy<T>(_ body: (any CachePolicy) -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body(book.policy)
    }

    /// Sequence `id` runs no more steps: the policy forgets its routing.
    public func sequenceEnded(_ id: Int) {
        lock.lock()
        defer { lock.unlock() }
        book.policy.sequenceEnded(id)
    }

    /// Stops the reader threads once the reads in progress finish. Queued reads are dropped,
    /// so call it only when no request is running.
    public func close() {
        lock.lock()
        closed = true
        lock.wakeAll()
        lock.unlock()
    }

    // MARK: ExpertProvider

    public func withExperts(layer: Int, experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        try withExperts(layer: layer, experts: experts, workers: 1, pinned: {}) { _, expert, weights in try body(expert, weights) }
    }

    /// One `withExperts` call's experts still to run; guarded by the cache's lock.
    private final class PendingExperts {
        var ready: [(expert: Int, weights: ExpertWeights)]
        var waiting: [(expert: Int, ticket: LoadTicket)]
        var unadmitted: [Int]
        var failure: Error?
        /// Experts whose `body` has returned, as routed (a low-bit copy as the expert it copies).
        var completed: [Int] = []
        /// Resident experts a worker is running now.
        var residentsRunning = 0
        /// Whether `residentsRan` has run (or will not).
        var residentsReported = false
        init(ready: [(expert: Int, weights: ExpertWeights)], waiting: [(expert: Int, ticket: LoadTicket)], unadmitted: [Int]) {
            self.ready = ready
            self.waiting = waiting
            self.unadmitted = unadmitted
        }
    }

    public func withExperts(layer: Int, experts: [Int], workers: Int, pinned: () -> Void,
                            _ body: (Int, Int, ExpertWeights) throws -> Void) throws {
        try withExperts(layer: layer, experts: experts, workers: workers, pinned: pinned, residentsRan: nil, body)
    }

    public func withExperts(layer: Int, experts: [Int], workers: Int, pinned: () -> Void, residentsRan: (([Int]) -> Void)?,
                            _ body: (Int, Int, ExpertWeights) throws -> Void) throws {
        try withExperts(layer: layer, experts: experts, workers: workers, pinned: pinned, residentsRan: residentsRan,
                        startsBeforeDown: false, body)
    }

    /// With `startsBeforeDown`, a worker waiting for the call's last outstanding expert takes it
    /// as soon as its split read has brought the gate and up matrices (`ExpertWeights.rest` set)
    /// rather than wait for the whole of it.
    public func withExperts(layer: Int, experts: [Int], workers: Int, pinned: () -> Void, residentsRan: (([Int]) -> Void)?,
                            startsBeforeDown: Bool, _ body: (Int, Int, ExpertWeights) throws -> Void) throws {
        var ready: [(expert: Int, weights: ExpertWeights)] = []
        var waiting: [(expert: Int, ticket: LoadTicket)] = []
        var unadmitted: [Int] = []
        let distinct = TraceReplay.distinct(experts)
        lock.lock()
        if lowBook != nil { precision.tick(layer: layer) }
        var promotions: [ExpertKey] = []
        for expert in distinct {
            let key = ExpertKey(layer: layer, expert: expert)
            if lowBook != nil, chooseLowBitLocked(key, &ready, &waiting, &unadmitted, &promotions) { continue }
            guard let entry = book.entry(key) else {
                count(layer) { $0.misses += 1 }
                unadmitted.append(expert)
                continue
            }
            book.pin(key)
            if entry.residency == .resident {
                let prefetchHit = book.use(key)
                count(layer) { $0.hits += 1; if prefetchHit { $0.prefetchHits += 1 } }
                ready.append((expert, weights[key]!))
            } else {
                count(layer) { $0.misses += 1; if entry.prefetchedUnused { $0.prefetchesLate += 1 } }
                if queue.promote(key) { count(layer) { $0.prefetchesPromoted += 1 }; demandQueuedAt[key] = DispatchTime.now().uptimeNanoseconds }
                waiting.append((expert, tickets[key]!))
            }
        }
        for key in promotions { promoteLocked(key) }
        do {
            try admit(layer: layer, &unadmitted, into: &waiting)
        } catch {
            releaseLocked(layer: layer, ready: ready, waiting: waiting)
            lock.unlock()
            throw error
        }
        lock.unlock()
        pinned()

        // Resident experts run while the misses load; each worker takes the next expert that
        // is ready, and only worker 0's waits count as stall (while it waits the other may compute).
        let pending = PendingExperts(ready: ready, waiting: waiting, unadmitted: unadmitted)
        // `pending` holds them from here. Copies left in these locals would keep every ticket's
        // weights, and so every expert's buffer, alive until the call returns, even after its
        // eviction (with `roomAtRead` the layer's own finished experts are evicted mid-call).
        pending.residentsReported = residentsRan == nil || (waiting.isEmpty && unadmitted.isEmpty)
        (ready, waiting, unadmitted) = ([], [], [])
        func work(_ worker: Int) {
            // The expert this worker just ran: unpinned in the same critical section that takes
            // the next one (one lock round per expert on the decode path, not two).
            var finished: (key: ExpertKey, resident: Bool, early: (ticket: LoadTicket, rest: ExpertArrival)?)?
            while true {
                lock.lock()
                if let finished {
                    if let early = finished.early {
                        count(layer) {
                            $0.splitStarts += 1
                            // Worker 0's wait for the down matrix is stall, as its waits for whole reads are.
                            if worker == 0 { $0.stallSeconds += early.rest.waitedSeconds }
                        }
                    }
                    // A split read that failed after its early copy was taken has removed the
                    // entry, pins and all (as for any failed read): nothing to unpin.
                    var entryGone = false
                    if let early = finished.early, case .failure? = early.ticket.result { entryGone = true }
                    if !entryGone { unpinLocked(finished.key) }
                    // Kept only while a report is due: without one, no list grows per layer and step.
                    if !pending.residentsReported {
                        pending.completed.append(finished.key.expert < 0 ? ~finished.key.expert : finished.key.expert)
                    }
                    if finished.resident { pending.residentsRunning -= 1 }
                    wakeForRoomLocked()   // someone may be waiting for room, or for the residents
                }
                finished = nil
                // Worker 0 (the caller's thread on the core pair) reports once the residents have all run and
                // misses remain; while the other worker still runs one, it waits for it.
                if worker == 0 && !pending.residentsReported && pending.failure == nil && pending.ready.isEmpty {
                    if pending.residentsRunning > 0 {
                        lock.waitForProgress()
                        lock.unlock()
                        continue
                    }
                    // Only while a read is still running (or not yet admitted): once the misses
                    // have all arrived the shadow would delay the layer instead of filling a wait,
                    // so worker 0 runs them and reports after, if a read still runs then.
                    let reading = !pending.unadmitted.isEmpty || pending.waiting.contains { $0.ticket.result == nil }
                    if pending.waiting.isEmpty && pending.unadmitted.isEmpty {
                        pending.residentsReported = true
                    } else if reading {
                        pending.residentsReported = true
                        let completed = pending.completed
                        lock.unlock()
                        residentsRan?(completed)
                        continue
                    }
                }
                var next: (expert: Int, weights: ExpertWeights)?
                var resident = false
                var earlyTicket: LoadTicket?
                if pending.failure == nil {
                    if !pending.ready.isEmpty {
                        next = pending.ready.removeFirst()
                        pending.residentsRunning += 1
                        resident = true
                    } else if !pending.waiting.isEmpty || !pending.unadmitted.isEmpty {
                        do {
                            let loaded = try nextLoadedLocked(layer: layer, &pending.waiting, &pending.unadmitted, countsStall: worker == 0,
                                                              takesEarly: startsBeforeDown)
                            switch loaded?.1.result {
                            case .success(let expertWeights)?: next = (loaded!.0, expertWeights)
                            case .failure(let error)?: pending.failure = error // its entry is gone: nothing to unpin
                            case nil:
                                if let loaded, let early = loaded.1.early {
                                    next = (loaded.0, early)
                                    earlyTicket = loaded.1
                                }
                                // else another worker took the last one
                            }
                        } catch {
                            pending.failure = error
                        }
                    }
                }
                lock.unlock()
                guard let (expert, expertWeights) = next else { return }
                let key = ExpertKey(layer: layer, expert: expert)
                do {
                    // A low-bit copy (negative index) runs as the expert it copies.
                    try body(worker, expert < 0 ? ~expert : expert, expertWeights)
                } catch {
                    lock.lock()
                    if pending.failure == nil { pending.failure = error }
                    lock.unlock()
                }
                finished = (key, resident, earlyTicket.map { ($0, expertWeights.rest!) })
            }
        }
        let parallel = min(workers, distinct.count)
        if parallel > 1 {
            withoutActuallyEscaping(work) { work in
                let step = UncheckedSendable(work)
                if parallel == 2 {
                    CorePair.run { step.value($0) } // the decode step's two workers, without a wake-up per layer
                } else {
                    DispatchQueue.concurrentPerform(iterations: parallel) { step.value($0) }
                }
            }
        } else {
            work(0)
        }
        if let failure = pending.failure {
            lock.lock()
            releaseLocked(layer: layer, ready: pending.ready, waiting: pending.waiting)
            lock.unlock()
            throw failure
        }
    }

    /// Whether decode hints mark their experts as about to be used (`CacheBookkeeping.expect`),
    /// so that the reads of the layers in between evict them last. `MOE_EXPECTED_LAST=0` turns it
    /// off, for comparison.
    static let expectedLast = ProcessInfo.processInfo.environment["MOE_EXPECTED_LAST"] != "0"

    /// Queues reads of those of `experts` that are neither resident nor loading, as room
    /// allows, at prefetch priority. Hints that cannot get room without waiting are dropped;
    /// decode hints (not `pipeline`) also when the layer's speculative bound is full. Decode
    /// hints also mark their experts, resident ones included, as about to be used: evicted
    /// last until their layer uses them or the guess is withdrawn (`cancelPrefetches`).
    public func prefetch(layer: Int, experts: [Int], pipeline: Bool) {
        lock.lock()
        defer { lock.unlock() }
        guard !prefetchesDisabled else { return }
        let mark = !pipeline && Self.expectedLast
        var queued = 0
        for expert in TraceReplay.distinct(experts) {
            let key = ExpertKey(layer: layer, expert: expert)
            guard book.entry(key) == nil else {
                if mark { book.expect(key) }
                continue
            }
            let bytes = loader.expertByteCount(layer: layer, expert: expert)
            guard case .reserved(let evicted) = book.reserve(key, bytes: bytes, pins: 0, prefetch: true, unbounded: pipeline) else {
                count(layer) { $0.prefetchesDropped += 1 }
                continue
            }
            loader.expectReads(bytes: bytes)
            evictedLocked(evicted)
            if mark { book.expect(key) }
            tickets[key] = LoadTicket()
            queue.enqueue(key, bytes: bytes, priority: .prefetch)
            count(layer) { $0.prefetchesIssued += 1 }
            queued += 1
        }
        lock.wakeReaders(queued)
    }

    /// Cancels queued, not yet started prefetches — of `layer` only if given, of `experts`
    /// of it only if given — that no request is waiting for, and withdraws those experts'
    /// marks as about to be used. Returns how many reads were cancelled.
    @discardableResult
    public func cancelPrefetches(layer: Int? = nil, experts: [Int]? = nil) -> Int {
        lock.lock()
        defer { lock.unlock() }
        let wanted = experts.map(Set.init)
        let matches = { (key: ExpertKey) in (layer == nil || key.layer == layer) && (wanted?.contains(key.expert) ?? true) }
        // The guesses are withdrawn whether their reads are queued, running or done.
        book.unexpect(where: matches)
        return cancelLocked(queue.queuedPrefetches.filter(matches))
    }

    /// A snapshot of the statistics.
    public func statistics() -> ExpertCacheStats {
        lock.lock()
        defer { lock.unlock() }
        var total = ExpertCacheCounters()
        for layer in counters.compactMap({ $0 }) { total.add(layer) }
        // With low-bit misses on, the budget and bytes are both pools'; resident experts count full copies.
        return ExpertCacheStats(
            policy: book.policy.name, budgetBytes: book.budgetBytes + (lowBook?.budgetBytes ?? 0),
            usedBytes: book.usedBytes + (lowBook?.usedBytes ?? 0),
            peakUsedBytes: book.peakUsedBytes + (lowBook?.peakUsedBytes ?? 0),
            residentExperts: lowBook == nil ? weights.count : weights.keys.filter { $0.expert >= 0 }.count,
            total: total, perLayer: counters,
            ioBusySeconds: Double(busyNanoseconds + (readsRunning > 0 ? DispatchTime.now().uptimeNanoseconds - busySince : 0)) / 1e9,
            policyLeader: book.policy.leader)
    }

    /// Moves the budget to `budgetBytes` (`--memory-budget auto`): shrinking evicts unpinned
    /// experts at once and drops their buffers (each is its own mapping, unmapped when its last
    /// user lets go, so the pages go back to the system); growing makes room for later reads.
    /// Throws below what the layers' floors need (the least the cache was opened with).
    /// Returns the experts evicted.
    /// Shrinking also gives up the buffers warmed for the old budget (`warmBuffers`).
    @discardableResult
    public func resize(budgetBytes: Int) throws -> Int {
        guard budgetBytes >= minimumBudgetBytes else {
            throw ExpertCacheError("an expert cache budget of \(budgetBytes) bytes is below the \(minimumBudgetBytes) bytes its floors need")
        }
        lock.lock()
        let shrinks = budgetBytes < book.budgetBytes + (lowBook?.budgetBytes ?? 0)
        let lowBytes = lowBook == nil ? 0 : lowBitPoolBytes(of: budgetBytes)
        let evicted = book.resize(budgetBytes: budgetBytes - lowBytes)
        evictedLocked(evicted)
        if lowBook != nil { evictedLocked(lowBook!.resize(budgetBytes: lowBytes)) }
        wakeForRoomLocked()   // a grown budget is room someone may be waiting for
        lock.unlock()
        // Outside the lock: unmapping unregisters each buffer from the io_uring reader.
        if shrinks { loader.dropWarmBuffers() }
        return evicted.count
    }

    /// Prepares buffers for reads to come (`ExpertLoader.warmBuffers`), one at a time while
    /// there is room for one more beside what the cache holds or has reserved and what is
    /// already warmed and not yet taken. The room is the budget, or `everyExpertBytes` (all the
    /// experts of the model) when that is less. Stops once `shouldStop()` is true or the cache
    /// is closed. Returns how many buffers it warmed. A server calls it once after loading, off
    /// the request path.
    public func warmBuffers(everyExpertBytes: Int, shouldStop: () -> Bool = { false }) -> Int {
        let bytes = layerList.map { loader.expertByteCount(layer: $0, expert: 0) }.max() ?? 0
        guard bytes > 0 else { return 0 }
        return loader.warmBuffers(limit: everyExpertBytes / bytes) { warmBytes in
            guard !shouldStop() else { return false }
            lock.lock()
            defer { lock.unlock() }
            return !closed && book.usedBytes + warmBytes + bytes <= min(book.budgetBytes, everyExpertBytes)
        }
    }

    /// Pins held now across experts (a forward pass holds its layer's experts pinned); 0 when
    /// nothing runs, so a value that stays above 0 after load is a leaked pin.
    public func pinCount() -> Int {
        lock.lock()
        defer { lock.unlock() }
        return book.entries.values.reduce(0) { $0 + $1.pins }
    }

    /// Opt-in lossy mode: routed experts below this mixing weight that are not resident when
    /// their layer runs are skipped (`WeakExpertSkipping`); nil (the default) is exact. Set it
    /// before the first request.
    public var skipMissingBelow: Float?

    public func skipWeakMissing(layer: Int, routes: inout [TokenRouting]) {
        guard let threshold = skipMissingBelow else { return }
        lock.lock()
        defer { lock.unlock() }
        // Decided under the lock, against the bookkeeping the following pinning uses: an
        // expert still being read counts as missing (waiting for it is what skipping avoids).
        let skipped = WeakExpertSkipping.apply(&routes, threshold: threshold) { expert in
            book.entry(ExpertKey(layer: layer, expert: expert))?.residency == .resident
        }
        if skipped.experts > 0 {
            count(layer) { $0.skippedTokens += skipped.tokens; $0.skippedExperts += skipped.experts }
        }
    }

    public func isReading(layer: Int, experts: [Int]) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return experts.contains { book.entry(ExpertKey(layer: layer, expert: $0))?.residency != .resident }
    }

    /// Whether `expert` of `layer` is resident now (for tests and diagnostics).
    public func isResident(layer: Int, expert: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return book.entry(ExpertKey(layer: layer, expert: expert))?.residency == .resident
    }

    /// Opt-in lossy mode (`--low-bit-misses on`, docs/LOSSY.md): an expert whose full copy is
    /// not resident runs from its low-bit copy (read at demand priority if absent; `share` of the
    /// budget holds low-bit copies, LRU), and one that stays in use is promoted to its full copy
    /// by a background read (`LowBitPrecision`). Throws when the loader has no low-bit copies or
    /// the budget cannot spare the pool. Call before the first request.
    public func enableLowBitMisses(share: Double = 0.25, promoteAfter: Int = 2, window: Int = 8) throws {
        precondition(share > 0 && share < 1)
        guard let first = layerList.first, let copyBytes = loader.lowBitByteCount(layer: first, expert: 0) else {
            throw ExpertCacheError("--low-bit-misses: the model has no low-bit copies of its experts (add them: moe-serve low-bit-copies STORE)")
        }
        lock.lock()
        defer { lock.unlock() }
        lowBitShare = share
        let total = book.budgetBytes
        let lowBytes = lowBitPoolBytes(of: total)
        guard lowBytes >= copyBytes else {
            throw ExpertCacheError("--low-bit-misses: a budget of \(total) bytes leaves no room for low-bit copies of \(copyBytes) bytes above the cache's floors (\(minimumBudgetBytes) bytes)")
        }
        evictedLocked(book.resize(budgetBytes: total - lowBytes))
        lowBook = CacheBookkeeping(budgetBytes: lowBytes, floorSlots: 0, policy: LRUPolicy(name: "lru-low-bit"))
        precision = LowBitPrecision(promoteAfter: promoteAfter, window: window)
    }

    /// The MoE layers this cache serves.
    public var moeLayers: [Int] { layerList }
    /// Whether the loader has low-bit copies (what `enableLowBitMisses` needs).
    public var hasLowBitCopies: Bool { layerList.first.flatMap { loader.lowBitByteCount(layer: $0, expert: 0) } != nil }

    /// Drops every later prefetch hint (`--low-bit-misses auto` on a slow disk, where the
    /// predictor's wrong guesses take bandwidth the certain reads need). Call before the first request.
    public func disablePrefetches() {
        lock.lock()
        defer { lock.unlock() }
        prefetchesDisabled = true
    }

    /// The low-bit pool's bytes out of a budget of `total`: its share, leaving the floors whole.
    private func lowBitPoolBytes(of total: Int) -> Int {
        max(0, min(Int(Double(total) * lowBitShare), total - minimumBudgetBytes))
    }

    /// The key of `key`'s low-bit copy (and back): the expert index complemented, so negative.
    static func lowBitKey(_ key: ExpertKey) -> ExpertKey { ExpertKey(layer: key.layer, expert: ~key.expert) }

    // MARK: Internals (the lock is held where the name says `Locked` or the comment says so)

    /// Reserves room and queues demand reads for `unadmitted`; those without room stay.
    /// Experts that became resident or loading meanwhile are joined instead. Lock held.
    private func admit(layer: Int, _ unadmitted: inout [Int], into waiting: inout [(expert: Int, ticket: LoadTicket)]) throws {
        guard !unadmitted.isEmpty else { return }
        var stillWaiting: [Int] = []
        var cancelledPrefetches = false
        var queued = 0
        defer { lock.wakeReaders(queued) }
        let window = configuration.roomAtRead ? .max : configuration.admissionWindow ?? .max
        for expert in unadmitted {
            let key = ExpertKey(layer: layer, expert: expert)
            // `waiting` holds this call's reserved experts not yet handed to a worker.
            if waiting.count >= window {
                stillWaiting.append(expert)
                continue
            }
            if expert < 0 {
                if try !admitLowBitLocked(key, into: &waiting) { stillWaiting.append(expert) } else { queued += queuedLowBit }
                continue
            }
            if let entry = book.entry(key) {
                book.pin(key)
                if entry.residency == .resident {
                    waiting.append((expert, LoadTicket(result: .success(weights[key]!))))
                } else {
                    if entry.prefetchedUnused { count(layer) { $0.prefetchesLate += 1 } }
                    if queue.promote(key) { count(layer) { $0.prefetchesPromoted += 1 }; demandQueuedAt[key] = DispatchTime.now().uptimeNanoseconds }
                    waiting.append((expert, tickets[key]!))
                }
                continue
            }
            let bytes = loader.expertByteCount(layer: layer, expert: expert)
            // With `roomAtRead` the reader makes the room (and credits the read) when it starts it.
            var reservation = configuration.roomAtRead ? book.reserveLater(key, bytes: bytes, pins: 1)
                                                       : book.reserve(key, bytes: bytes, pins: 1)
            if reservation == .noRoom && !cancelledPrefetches {
                // Queued prefetches hold room a demand needs now: they lose.
                cancelledPrefetches = true
                if cancelLocked(queue.queuedPrefetches) > 0 { reservation = book.reserve(key, bytes: bytes, pins: 1) }
            }
            switch reservation {
            case .reserved(let evicted):
                // Before the evictions: their buffers may wait for this read.
                if !configuration.roomAtRead { loader.expectReads(bytes: bytes) }
                evictedLocked(evicted)
                let ticket = LoadTicket()
                tickets[key] = ticket
                queue.enqueue(key, bytes: bytes, priority: .demand)
                demandQueuedAt[key] = DispatchTime.now().uptimeNanoseconds
                queued += 1
                waiting.append((expert, ticket))
            case .noRoom:
                stillWaiting.append(expert)
            case .tooLarge:
                throw ExpertCacheError("expert \(expert) of layer \(layer) (\(bytes) bytes) is larger than the expert cache budget (\(book.budgetBytes) bytes)")
            }
        }
        unadmitted = stillWaiting
    }

    /// Blocks until one of `waiting` has finished (trying to admit `unadmitted` meanwhile),
    /// removes and returns it, recording its demand use; nil once both lists are empty (another
    /// worker took the last one while this one waited). Time blocked counts as stall when
    /// `countsStall`. Lock held (released while waiting).
    /// With `takesEarly`, when no read has finished, one whose early copy is ready is returned
    /// instead (its ticket's `result` still nil, its use recorded once it is resident).
    private func nextLoadedLocked(layer: Int, _ waiting: inout [(expert: Int, ticket: LoadTicket)],
                                  _ unadmitted: inout [Int], countsStall: Bool, takesEarly: Bool = false) throws -> (Int, LoadTicket)? {
        var stalled: UInt64 = 0
        defer { if stalled > 0 && countsStall { count(layer) { $0.stallSeconds += Double(stalled) / 1e9 } } }
        while true {
            if waiting.isEmpty && unadmitted.isEmpty { return nil }
            try admit(layer: layer, &unadmitted, into: &waiting)
            if let index = waiting.firstIndex(where: { $0.ticket.result != nil }) {
                let (expert, ticket) = waiting.remove(at: index)
                if case .success = ticket.result! {
                    let key = ExpertKey(layer: layer, expert: expert)
                    if expert < 0 { lowBook!.use(key) } else { book.use(key) }
                }
                return (expert, ticket)
            }
            // Only the call's last expert is taken early: a worker waiting on an early copy's
            // down matrix cannot run another expert that arrives whole meanwhile, and taking
            // earlier ones cost more than it saved (0.95-0.97x on OLMoE, session 22). The last
            // one's wait is the stall a split read can shorten.
            if takesEarly && waiting.count == 1 && unadmitted.isEmpty {
                if waiting[0].ticket.early != nil {
                    let (expert, ticket) = waiting.removeFirst()
                    ticket.earlyUses += 1
                    return (expert, ticket)
                }
                waiting[0].ticket.earlyWanted = true
            }
            if closed { throw ExpertCacheError("the expert cache was closed while a request was waiting") }
            let start = DispatchTime.now().uptimeNanoseconds
            lock.waitForProgress()
            stalled += DispatchTime.now().uptimeNanoseconds - start
        }
    }

    /// Unpins what an abandoned request still holds: unprocessed residents and reads it was
    /// waiting for (except failed ones, whose entries are gone). Lock held.
    private func releaseLocked(layer: Int, ready: [(expert: Int, weights: ExpertWeights)],
                               waiting: [(expert: Int, ticket: LoadTicket)]) {
        for (expert, _) in ready { unpinLocked(ExpertKey(layer: layer, expert: expert)) }
        for (expert, ticket) in waiting {
            if case .failure = ticket.result { continue }
            unpinLocked(ExpertKey(layer: layer, expert: expert))
        }
        wakeForRoomLocked()
    }

    /// With low-bit misses on: asks `precision` which copy of `key` runs; for the low-bit one
    /// pins or queues it (as its negative index) and returns true, and notes a promotion.
    /// Returns false when the full copy runs (the caller goes on as without low-bit copies). Lock held.
    private func chooseLowBitLocked(_ key: ExpertKey, _ ready: inout [(expert: Int, weights: ExpertWeights)],
                                    _ waiting: inout [(expert: Int, ticket: LoadTicket)], _ unadmitted: inout [Int],
                                    _ promotions: inout [ExpertKey]) -> Bool {
        let lowKey = Self.lowBitKey(key)
        let choice = precision.choose(key, full: book.entry(key)?.residency, lowBit: lowBook!.entry(lowKey)?.residency)
        guard case .lowBit(let promote) = choice else { return false }
        count(key.layer) { $0.misses += 1; $0.lowBitUses += 1 }
        if promote && book.entry(key) == nil { promotions.append(key) }
        if let entry = lowBook!.entry(lowKey) {
            lowBook!.pin(lowKey)
            if entry.residency == .resident {
                lowBook!.use(lowKey)
                ready.append((lowKey.expert, weights[lowKey]!))
            } else {
                waiting.append((lowKey.expert, tickets[lowKey]!))
            }
        } else {
            unadmitted.append(lowKey.expert)
        }
        return true
    }

    /// Reads queued by the last `admitLowBitLocked` (0 or 1).
    private var queuedLowBit = 0

    /// Pins the low-bit copy `lowKey` for a request, reserving room in the low-bit pool and
    /// queueing its demand read if absent; false when the pool has no room now. Lock held.
    private func admitLowBitLocked(_ lowKey: ExpertKey, into waiting: inout [(expert: Int, ticket: LoadTicket)]) throws -> Bool {
        queuedLowBit = 0
        if let entry = lowBook!.entry(lowKey) {
            lowBook!.pin(lowKey)
            waiting.append((lowKey.expert, entry.residency == .resident ? LoadTicket(result: .success(weights[lowKey]!)) : tickets[lowKey]!))
            return true
        }
        let bytes = loader.lowBitByteCount(layer: lowKey.layer, expert: ~lowKey.expert)!
        switch lowBook!.reserve(lowKey, bytes: bytes, pins: 1) {
        case .reserved(let evicted):
            evictedLocked(evicted)
            let ticket = LoadTicket()
            tickets[lowKey] = ticket
            queue.enqueue(lowKey, bytes: bytes, priority: .demand)
            queuedLowBit = 1
            waiting.append((lowKey.expert, ticket))
            return true
        case .noRoom:
            return false
        case .tooLarge:
            throw ExpertCacheError("the low-bit copy of expert \(~lowKey.expert) of layer \(lowKey.layer) (\(bytes) bytes) is larger than the low-bit pool (\(lowBook!.budgetBytes) bytes)")
        }
    }

    /// Starts the background read of `key`'s full copy (a promotion), at prefetch priority, if
    /// room can be made. Lock held.
    private func promoteLocked(_ key: ExpertKey) {
        guard book.entry(key) == nil else { return }
        let bytes = loader.expertByteCount(layer: key.layer, expert: key.expert)
        guard case .reserved(let evicted) = book.reserve(key, bytes: bytes, pins: 0, prefetch: true, unbounded: true) else { return }
        evictedLocked(evicted)
        tickets[key] = LoadTicket()
        queue.enqueue(key, bytes: bytes, priority: .prefetch)
        count(key.layer) { $0.lowBitPromotions += 1 }
        lock.wakeReaders(1)
    }

    /// The full copy of `key` is resident: its low-bit copy, if unused now, makes room. Lock held.
    private func dropLowBitCopyLocked(of key: ExpertKey) {
        let lowKey = Self.lowBitKey(key)
        guard let entry = lowBook?.entry(lowKey), entry.pins == 0, entry.residency == .resident else { return }
        lowBook!.remove(lowKey)
        weights[lowKey] = nil
    }

    /// Removes a user of `key` from the pool it lives in. Lock held.
    private func unpinLocked(_ key: ExpertKey) {
        if key.expert < 0 { lowBook!.unpin(key) } else { book.unpin(key) }
    }

    /// Drops evicted experts' weights and counts the evictions. Lock held.
    private func evictedLocked(_ evicted: [CacheBookkeeping.Eviction]) {
        for eviction in evicted {
            weights[eviction.key] = nil
            count(eviction.key.layer) {
                $0.evictions += 1
                if eviction.wastedPrefetch { $0.wastedPrefetchBytes += eviction.bytes }
            }
        }
    }

    /// Cancels those of `keys` that are queued prefetches nobody waits for. Lock held.
    private func cancelLocked(_ keys: [ExpertKey]) -> Int {
        var cancelled = 0
        for key in keys where book.entry(key)?.pins == 0 && queue.priority(of: key) == .prefetch {
            loader.expectReads(bytes: -loader.expertByteCount(layer: key.layer, expert: key.expert))
            queue.cancel(key)
            book.remove(key)
            tickets[key] = nil
            count(key.layer) { $0.prefetchesCancelled += 1 }
            cancelled += 1
        }
        if cancelled > 0 { wakeForRoomLocked() }   // their room is free
        return cancelled
    }

    private func count(_ layer: Int, _ update: (inout ExpertCacheCounters) -> Void) {
        if counters.count <= layer { counters += [ExpertCacheCounters?](repeating: nil, count: layer + 1 - counters.count) }
        var value = counters[layer] ?? ExpertCacheCounters()
        update(&value)
        counters[layer] = value
    }

    /// Room was freed (an unpin, a cancelled or failed read, a grown budget): wakes the
    /// requesters, and a reader if one left a read waiting for room. Lock held.
    private func wakeForRoomLocked() {
        lock.wakeRequesters()
        if readerAwaitsRoom {
            readerAwaitsRoom = false
            lock.wakeReaders(1)
        }
    }

    /// The next read to start, with its room made first if it was queued without
    /// (`roomAtRead`): the victims are chosen now, when the step's own finished experts can
    /// be among them. Nil when no read may start, or when the first in line cannot get room
    /// yet (queued prefetches, which hold room a demand needs now, are cancelled for it first);
    /// the next release of room then wakes a reader. Lock held.
    private func nextStartableJobLocked() -> ReadQueue.Job? {
        var blocked = false
        let roomMade = { (job: ReadQueue.Job) -> Bool in
            guard job.key.expert >= 0, self.book.entry(job.key)?.awaitingRoom == true else { return true }
            guard case .reserved(let evicted) = self.book.makeRoom(for: job.key) else {
                // `.tooLarge` cannot happen: `reserveLater` checked the size, and the budget never
                // shrinks below the largest expert (`minimumBudgetBytes`).
                blocked = true
                return false
            }
            self.loader.expectReads(bytes: job.bytes) // before the evictions: their buffers may wait for this read
            self.evictedLocked(evicted)
            return true
        }
        if let job = queue.nextJob(startingIf: roomMade) { return job }
        guard blocked else { return nil }
        if cancelLocked(queue.queuedPrefetches) > 0 {
            blocked = false
            if let job = queue.nextJob(startingIf: roomMade) { return job }
        }
        // Still short of room: the next release of room must wake a reader (nothing else may).
        if blocked { readerAwaitsRoom = true }
        return nil
    }

    /// A reader thread: takes the most urgent read, performs it unlocked, publishes it.
    private func readerLoop() {
        lock.lock()
        while !closed {
            guard let job = nextStartableJobLocked() else {
                lock.waitForWork()
                continue
            }
            let lowBit = job.key.expert < 0
            let started = DispatchTime.now().uptimeNanoseconds
            let queuedAt = demandQueuedAt.removeValue(forKey: job.key)
            count(job.key.layer) {
                if lowBit { $0.lowBitBytes += job.bytes } else if job.priority == .demand { $0.demandBytes += job.bytes } else { $0.prefetchBytes += job.bytes }
                if job.priority == .demand, let queuedAt { $0.demandQueuedSeconds += Double(started - queuedAt) / 1e9 }
            }
            if readsRunning == 0 {
                busySince = started
                // The spare core goes to the reads' completions, not to the CorePair helper's spin.
                CorePair.quiet(1)
            }
            readsRunning += 1
            lock.unlock()
            let result = Result {
                lowBit ? try loader.loadLowBitExpert(layer: job.key.layer, expert: ~job.key.expert)
                       : try loader.loadExpert(layer: job.key.layer, expert: job.key.expert) { early in
                           // Gate and up are in; the down matrix is still arriving.
                           lock.lock()
                           if let ticket = tickets[job.key] {
                               ticket.early = early
                               if ticket.earlyWanted { lock.wakeRequesters() }
                           }
                           lock.unlock()
                       }
            }
            lock.lock()
            let ended = DispatchTime.now().uptimeNanoseconds
            readsRunning -= 1
            if readsRunning == 0 {
                busyNanoseconds += ended - busySince
                CorePair.quiet(-1)
                // The credit counts reads not yet started. With none queued and none running, every
                // read has taken its buffer, so what is left is over (a read that failed before
                // taking one) and goes. Not when the last queued read starts: the reads started
                // just before it may not have taken their pooled buffers yet, and dropping the
                // credit then unmapped one of them (BufferRecyclingTests, under load).
                if queue.queuedCount == 0 { loader.noReadsExpected() }
            }
            count(job.key.layer) { $0.readSeconds += Double(ended - started) / 1e9 }
            queue.finish(job)
            let ticket = tickets.removeValue(forKey: job.key)!
            ticket.result = result
            ticket.early = nil
            switch result {
            case .success(let loaded):
                weights[job.key] = loaded
                if lowBit { lowBook!.loaded(job.key) } else { book.loaded(job.key) }
                // Requests that began on the early copy: their uses, now that it is resident.
                for _ in 0..<ticket.earlyUses { _ = book.use(job.key) }
                if !lowBit { dropLowBitCopyLocked(of: job.key) }
            case .failure:
                if lowBit { lowBook!.remove(job.key) } else { book.remove(job.key) }
                count(job.key.layer) { $0.loadFailures += 1 }
            }
            lock.wakeRequesters()
            // Reads held back by the in-flight limit may start now; this thread takes one itself.
            if queue.queuedCount > 1 { lock.wakeReaders(1) }
        }
        lock.unlock()
    }
}

/// A failure of the expert cache itself (as opposed to the loader's own errors).
public struct ExpertCacheError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension OffloadingExpertCache {
    /// Users pinning `expert` of `layer` (0 if untracked); for tests and diagnostics.
    func pins(layer: Int, expert: Int) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return book.entry(ExpertKey(layer: layer, expert: expert))?.pins ?? 0
    }

    /// Whether no read is queued or running.
    var isIdle: Bool {
        lock.lock()
        defer { lock.unlock() }
        return queue.queuedCount == 0 && queue.inFlightBytes == 0
    }
}
