import CURing
import Foundation

/// Reads one file through io_uring: callers on any thread submit reads to one shared ring and
/// a single reaper thread takes the completions, so many reads are in flight without a thread
/// per read. A blocking `read` splits a large range into `pieceBytes` pieces submitted at
/// once (an expert read alone reaches queue depth ~len/piece); `submit` is the asynchronous
/// form for callers that keep their own depth (`bench io`).
///
/// Buffers registered with `registerBuffers` (a fixed set, `bench io`) or one at a time with
/// `registerTarget` (the expert cache's buffers, in a sparse table) are read with
/// `IORING_OP_READ_FIXED`: the kernel pinned their pages once and skips pinning them on every
/// read. Reads go to the descriptor of a
/// `DirectFileReader`, so they are O_DIRECT where that file is; short reads are resubmitted
/// for the rest, like `DirectFileReader.read` retries `pread`.
public final class UringFileReader: BlockReader, @unchecked Sendable {
    /// The file whose descriptor is read (kept open by this reference).
    public let file: DirectFileReader
    /// Ring entries: the most reads in flight at once.
    public let entries: Int
    /// Bytes of each piece a blocking `read` submits.
    public let pieceBytes: Int
    /// `io_uring`.
    public var engineName: String { IOEngineChoice.uring.rawValue }

    /// The ring and everything the reaper touches. The reaper thread holds its own strong
    /// reference, so the ring outlives the reader until the reaper has stopped: the reader's
    /// deinit may then run on any thread — also on the reaper itself, when a read's completion
    /// drops the last reference to the store (it then must not wait for the reaper, which is
    /// itself; the ring is torn down when the reaper's loop returns).
    private let ring: Ring
    /// The reaper thread's id, to recognise a deinit running on it.
    private let reaperThread: ReaperIdentity

    /// Sets up a ring of `entries` (1...4096) over `file`'s descriptor; throws a one-line
    /// error when the kernel refuses (no io_uring, seccomp, memlock limits).
    public init(file: DirectFileReader, entries: Int = IOEngine.defaultRingEntries, pieceBytes: Int = IOEngine.defaultPieceBytes) throws {
        precondition(pieceBytes >= DirectFileReader.granule && pieceBytes % DirectFileReader.granule == 0)
        self.file = file
        self.entries = entries
        self.pieceBytes = pieceBytes
        let ring = try Ring(file: file, entries: entries)
        self.ring = ring
        let identity = ReaperIdentity()
        reaperThread = identity
        let thread = Thread {
            identity.set()
            ring.reap()
        }
        thread.name = "io_uring reaper"
        thread.start()
    }

    deinit {
        ring.shutdown()
        // On the reaper itself (a completion released the last reference): it stops after
        // this completion returns and frees the ring then.
        if !reaperThread.isCurrent { ring.reaperDone.wait() }
    }

    /// Registers `regions` (each 4 KiB-aligned) as fixed buffers; reads wholly inside one of
    /// them use `READ_FIXED`. Once per reader; throws when the kernel refuses (e.g. the
    /// memlock limit), in which case reads just stay unregistered.
    public func registerBuffers(_ regions: [UnsafeMutableRawBufferPointer]) throws {
        try ring.registerBuffers(regions)
    }

    /// Whether reads into registered buffers use `READ_FIXED` (some registered).
    public var hasRegisteredBuffers: Bool { ring.hasRegisteredBuffers }

    /// Opens a table of `slots` (at most 16,384, the kernel's limit) for buffers registered one
    /// at a time with `registerTarget`. Once per reader, not with `registerBuffers`; throws when
    /// the kernel refuses.
    public func enableTargetRegistration(slots: Int) throws {
        try ring.enableTargetRegistration(slots: slots)
    }

    /// Registers the mapping `[start, start + bytes)` (4 KiB-aligned) so that reads into it use
    /// `READ_FIXED` until `unregisterTarget(start)`, which must come before the mapping is
    /// unmapped: a registered mapping's pages stay pinned. True when it is registered (now or
    /// before); false without a table, when the table is full, or once the kernel has refused
    /// one (the memlock limit: registered pages count as locked memory), after which the reader
    /// stops asking, reads stay unregistered, and one line on standard error says why.
    public func registerTarget(_ start: UnsafeMutableRawPointer, bytes: Int) -> Bool {
        let (registered, refusedNow) = ring.registerTarget(start, bytes: bytes)
        if let refusedNow { Self.reportRefusal(refusedNow) }
        return registered
    }

    /// Says why buffers stopped being registered, once, when the kernel refuses the first one
    /// (registered pages count against the memlock limit without CAP_IPC_LOCK).
    private static func reportRefusal(_ errno: Int32) {
        var limit = rlimit()
        getrlimit(Int32(__RLIMIT_MEMLOCK.rawValue), &limit)
        let shown = limit.rlim_cur == rlim_t.max ? "unlimited" : "\(limit.rlim_cur >> 10) KiB"
        FileHandle.standardError.write(Data(("moe-serve: io_uring refused to register an expert buffer (\(String(cString: strerror(errno)))); "
            + "the memlock limit is \(shown). Expert reads stay correct but pin their pages on every read; "
            + "raise the limit (LimitMEMLOCK=infinity in systemd, ulimit -l unlimited) or grant CAP_IPC_LOCK\n").utf8))
    }

    /// Unregisters a mapping `registerTarget` registered (nothing for any other address). No read
    /// into it may be in flight.
    public func unregisterTarget(_ start: UnsafeMutableRawPointer) {
        ring.unregisterTarget(start)
    }

    /// What target registration has done so far.
    public struct RegistrationStatistics: Sendable, Equatable {
        /// Mappings registered now.
        public var registeredTargets: Int
        /// Registrations made since the reader opened (a mapping registered again after being
        /// unregistered counts again).
        public var registrations: Int
        /// Read pieces submitted as `READ_FIXED`.
        public var fixedReads: Int
        /// Read pieces submitted as plain reads.
        public var plainReads: Int
        /// The kernel's errno when it refused a registration (then no more are tried), else nil.
        public var refusal: Int32?
    }

    /// A snapshot of the registration counters.
    public var registrationStatistics: RegistrationStatistics { ring.registrationStatistics }

    /// Reads `length` bytes at `offset` into `buffer` in pieces of `pieceBytes`, all in flight
    /// at once, and waits for them; returns the bytes read (fewer only at end of file).
    public func read(into buffer: UnsafeMutableRawPointer, offset: Int, length: Int) throws -> Int {
        try read(into: buffer, offset: offset, length: length, firstPart: length, firstPartArrived: {})
    }

    /// A split read: the same pieces as a plain read, all submitted at once, and
    /// `firstPartArrived` runs as soon as the pieces covering the first `firstPart` bytes are
    /// all in, while the others may still be reading. The pieces are not cut at `firstPart`:
    /// more and smaller pieces cost more than the early start gains (session 22), so a first
    /// part that ends inside the last piece is no split at all.
    public func read(into buffer: UnsafeMutableRawPointer, offset: Int, length: Int, firstPart: Int,
                     firstPartArrived: () -> Void) throws -> Int {
        guard length > 0 else { return 0 }
        let split = firstPart > 0 && firstPart < length ? firstPart : length
        // Piece i is [i · pieceBytes, +pieceLength(i)); the first `firstPieces` hold the first part.
        let pieces = (length + pieceBytes - 1) / pieceBytes
        let firstPieces = (split + pieceBytes - 1) / pieceBytes
        func pieceLength(_ index: Int) -> Int { min(pieceBytes, length - index * pieceBytes) }
        // Looked up once for the whole range; every piece lies inside it.
        let fixed = ring.fixedIndex(buffer, length)
        // A plain read (no piece after the first part) waits on one semaphore, as before splits.
        let firstDone = DispatchSemaphore(value: 0)
        let restDone = firstPieces < pieces ? DispatchSemaphore(value: 0) : firstDone
        // Each piece's completion writes only its own element; the waits below order the reads.
        nonisolated(unsafe) let results = UnsafeMutableBufferPointer<Result<Int, UringReadError>>.allocate(capacity: pieces)
        results.initialize(repeating: .success(0))
        defer { results.deallocate() }
        for piece in 0..<pieces {
            let start = piece * pieceBytes
            let done = piece < firstPieces ? firstDone : restDone
            ring.submit(into: buffer + start, offset: offset + start, length: pieceLength(piece), fixedIndex: fixed) { result in
                results[piece] = result
                done.signal()
            }
        }
        for _ in 0..<firstPieces { firstDone.wait() }
        if firstPieces < pieces {
            // The first part is in when each of its pieces is, up to the part's own end (a short
            // piece at the end of the file leaves it incomplete).
            let firstComplete = (0..<firstPieces).allSatisfy { piece in
                guard case let .success(got) = results[piece] else { return false }
                return got >= min(pieceLength(piece), split - piece * pieceBytes)
            }
            if firstComplete { firstPartArrived() }
            // Every piece is waited for, also after a failure: none may still write into `buffer`.
            for _ in firstPieces..<pieces { restDone.wait() }
        }
        // Bytes read: up to the first piece that came back short (end of file).
        var total = 0
        for piece in 0..<pieces {
            switch results[piece] {
            case let .failure(failure):
                throw ModelFormatError.file(file.path, "read of \(length) bytes at offset \(offset) failed: \(String(cString: strerror(failure.code))) (io_uring)")
            case let .success(got):
                total += got
                if got < pieceLength(piece) { return total }
            }
        }
        return total
    }

    /// Submits one read of `length` bytes at `offset` into `buffer` and returns at once (after
    /// waiting for a free ring slot when `entries - 1` reads are in flight). `completion` runs
    /// on the reaper thread with the bytes read (short only at end of file) or an errno; keep
    /// it short.
    public func submit(into buffer: UnsafeMutableRawPointer, offset: Int, length: Int,
                       completion: @escaping @Sendable (Result<Int, UringReadError>) -> Void) {
        ring.submit(into: buffer, offset: offset, length: length, fixedIndex: ring.fixedIndex(buffer, length), completion: completion)
    }
}

/// The pthread of a reaper, set by the reaper itself when it starts.
private final class ReaperIdentity: @unchecked Sendable {
    private let lock = NSLock()
    private var thread: pthread_t?
    func set() { lock.lock(); thread = pthread_self(); lock.unlock() }
    var isCurrent: Bool {
        lock.lock(); defer { lock.unlock() }
        guard let thread else { return false }
        return pthread_equal(thread, pthread_self()) != 0
    }
}

/// One io_uring instance over one descriptor: submission from any thread, completion on the
/// thread running `reap()`. Torn down (`io_uring_queue_exit`) when the last reference goes,
/// which is the reaper's once it has seen the shutdown NOP.
private final class Ring: @unchecked Sendable {
    /// One submitted read: where it goes, how far it got, whom to tell.
    private struct Pending {
        var buffer: UnsafeMutableRawPointer
        var offset: Int
        var length: Int
        var done: Int
        var fixedIndex: Int?
        var completion: @Sendable (Result<Int, UringReadError>) -> Void
    }

    let file: DirectFileReader
    private let ring: UnsafeMutablePointer<io_uring>
    /// Guards the submission queue, `pending`, `nextID`, `registered` and `stopping`.
    private let lock = NSLock()
    private var pending: [UInt64: Pending] = [:]
    private var nextID: UInt64 = 0
    /// Registered regions (start, length), indexed as the kernel knows them.
    private var registered: [(start: UInt, length: Int)] = []
    /// Sparse-table registration (`registerTarget`): slots in the table, 0 when there is none.
    private var targetSlots = 0
    /// Registered mappings by start address: their slot and length.
    private var targets: [UInt: (slot: Int, length: Int)] = [:]
    /// Slots not in use (or not yet: a slot being registered or unregistered is in neither).
    private var freeSlots: [Int] = []
    /// Mappings whose registration is under way (a second caller does not register them twice).
    private var registering: Set<UInt> = []
    private var registrations = 0
    private var fixedReads = 0
    private var plainReads = 0
    /// The errno of the registration the kernel refused; none are tried after it.
    private var refusal: Int32?
    private var stopping = false
    /// Bounds reads in flight by the ring's size so the completion queue never overflows.
    private let slots: DispatchSemaphore
    let reaperDone = DispatchSemaphore(value: 0)
    private static let shutdownID = UInt64.max

    init(file: DirectFileReader, entries: Int) throws {
        self.file = file
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        // The kernel itself refuses 0 entries (EINVAL); above 4096 liburing would clamp silently.
        let status = entries >= 0 && entries <= 4096 ? io_uring_queue_init(UInt32(entries), ring, 0) : -EINVAL
        guard status == 0 else {
            ring.deinitialize(count: 1)
            ring.deallocate()
            throw ModelFormatError("io_uring unavailable (setup of \(entries) entries: \(String(cString: strerror(-status))))")
        }
        // One slot stays free for the shutdown NOP.
        slots = DispatchSemaphore(value: entries - 1 > 0 ? entries - 1 : 1)
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deinitialize(count: 1)
        ring.deallocate()
    }

    /// Queues the NOP that ends the reaper's loop (once).
    func shutdown() {
        lock.lock()
        defer { lock.unlock() }
        guard !stopping else { return }
        stopping = true
        if let sqe = nextSQE() {
            io_uring_prep_nop(sqe)
            io_uring_sqe_set_data64(sqe, Self.shutdownID)
            _ = io_uring_submit(ring)
        }
    }

    func registerBuffers(_ regions: [UnsafeMutableRawBufferPointer]) throws {
        lock.lock(); defer { lock.unlock() }
        precondition(registered.isEmpty, "buffers are registered once per reader")
        var vectors = regions.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
        let status = io_uring_register_buffers(ring, &vectors, UInt32(vectors.count))
        guard status == 0 else {
            throw ModelFormatError("io_uring: registering \(regions.count) buffers failed: \(String(cString: strerror(-status)))")
        }
        registered = regions.map { (UInt(bitPattern: $0.baseAddress), $0.count) }
    }

    var hasRegisteredBuffers: Bool {
        lock.lock(); defer { lock.unlock() }
        return !registered.isEmpty || !targets.isEmpty
    }

    func enableTargetRegistration(slots count: Int) throws {
        lock.lock(); defer { lock.unlock() }
        precondition(registered.isEmpty && targetSlots == 0, "one kind of registration, once per reader")
        let status = count > 0 && count <= 1 << 14 ? io_uring_register_buffers_sparse(ring, UInt32(count)) : -EINVAL
        guard status == 0 else {
            throw ModelFormatError("io_uring: a table of \(count) buffers was refused: \(String(cString: strerror(-status)))")
        }
        targetSlots = count
        freeSlots = Array((0..<count).reversed())
    }

    /// Whether `[start, start + bytes)` is registered, and the errno when this call is the one the
    /// kernel refused (the first refusal; none are tried after it).
    func registerTarget(_ start: UnsafeMutableRawPointer, bytes: Int) -> (registered: Bool, refusedNow: Int32?) {
        let key = UInt(bitPattern: start)
        lock.lock()
        if let known = targets[key], known.length >= bytes { lock.unlock(); return (true, nil) }
        guard targets[key] == nil, !registering.contains(key), refusal == nil, let slot = freeSlots.popLast() else {
            lock.unlock()
            return (false, nil)
        }
        registering.insert(key)
        lock.unlock()
        // Outside the lock: pinning a multi-megabyte mapping takes a while, and submissions
        // and the reaper need the lock meanwhile. The slot is in neither list until it is done.
        var vector = iovec(iov_base: start, iov_len: bytes)
        let status = io_uring_register_buffers_update_tag(ring, UInt32(slot), &vector, nil, 1)
        lock.lock(); defer { lock.unlock() }
        registering.remove(key)
        guard status == 1 else {
            freeSlots.append(slot)
            // Two registrations may fail at once; only the first one counts as the refusal.
            guard refusal == nil else { return (false, nil) }
            let code = status < 0 ? -status : EINVAL
            refusal = code
            return (false, code)
        }
        targets[key] = (slot, bytes)
        registrations += 1
        return (true, nil)
    }

    func unregisterTarget(_ start: UnsafeMutableRawPointer) {
        lock.lock()
        guard let target = targets.removeValue(forKey: UInt(bitPattern: start)) else { lock.unlock(); return }
        lock.unlock()
        // An empty vector empties the slot; the kernel drops its pins on the pages.
        var empty = iovec(iov_base: nil, iov_len: 0)
        let status = io_uring_register_buffers_update_tag(ring, UInt32(target.slot), &empty, nil, 1)
        lock.lock(); defer { lock.unlock() }
        // A slot the kernel would not empty is not reused (it still holds the old mapping).
        if status == 1 { freeSlots.append(target.slot) }
    }

    var registrationStatistics: UringFileReader.RegistrationStatistics {
        lock.lock(); defer { lock.unlock() }
        return .init(registeredTargets: targets.count, registrations: registrations, fixedReads: fixedReads,
                     plainReads: plainReads, refusal: refusal)
    }

    /// The registered buffer holding `[buffer, buffer + length)`: a target starting at
    /// `buffer`, or one of the fixed set's regions.
    func fixedIndex(_ buffer: UnsafeMutableRawPointer, _ length: Int) -> Int? {
        lock.lock(); defer { lock.unlock() }
        if let target = targets[UInt(bitPattern: buffer)], length <= target.length { return target.slot }
        return registeredIndex(buffer, length)
    }

    func submit(into buffer: UnsafeMutableRawPointer, offset: Int, length: Int, fixedIndex fixed: Int?,
                completion: @escaping @Sendable (Result<Int, UringReadError>) -> Void) {
        slots.wait()
        lock.lock()
        let id = nextID
        nextID &+= 1
        pending[id] = Pending(buffer: buffer, offset: offset, length: length, done: 0, fixedIndex: fixed, completion: completion)
        enqueue(id)
        lock.unlock()
    }

    /// Queues the rest of pending read `id` and submits it. Lock held.
    private func enqueue(_ id: UInt64) {
        guard let read = pending[id], let sqe = nextSQE() else {
            // Cannot happen while `slots` bounds reads in flight below the ring size.
            preconditionFailure("io_uring submission queue full")
        }
        let target = read.buffer + read.done
        let count = UInt32(read.length - read.done)
        let at = UInt64(read.offset + read.done)
        if let index = read.fixedIndex {
            io_uring_prep_read_fixed(sqe, file.descriptor, target, count, at, Int32(index))
            fixedReads += 1
        } else {
            io_uring_prep_read(sqe, file.descriptor, target, count, at)
            plainReads += 1
        }
        io_uring_sqe_set_data64(sqe, id)
        _ = io_uring_submit(ring)
    }

    /// A free submission entry, flushing queued ones to the kernel when the queue is full. Lock held.
    private func nextSQE() -> UnsafeMutablePointer<io_uring_sqe>? {
        if let sqe = io_uring_get_sqe(ring) { return sqe }
        _ = io_uring_submit(ring)
        return io_uring_get_sqe(ring)
    }

    /// The index of the fixed set's region holding `[buffer, buffer + length)`. Lock held.
    private func registeredIndex(_ buffer: UnsafeMutableRawPointer, _ length: Int) -> Int? {
        let start = UInt(bitPattern: buffer)
        return registered.firstIndex { start >= $0.start && start + UInt(length) <= $0.start + UInt($0.length) }
    }

    /// The reaper: waits for completions, resubmits short reads for their rest, and hands
    /// finished reads to their completions. Runs until the shutdown NOP arrives.
    func reap() {
        while true {
            var cqe: UnsafeMutablePointer<io_uring_cqe>?
            let status = io_uring_wait_cqe(ring, &cqe)
            if status == -EINTR { continue }
            guard status == 0, let cqe else { preconditionFailure("io_uring_wait_cqe: \(String(cString: strerror(-status)))") }
            let id = io_uring_cqe_get_data64(cqe)
            let res = cqe.pointee.res
            io_uring_cqe_seen(ring, cqe)
            if id == Self.shutdownID { break }

            lock.lock()
            guard var read = pending[id] else { lock.unlock(); continue }
            var outcome: Result<Int, UringReadError>?
            if res == -EINTR || res == -EAGAIN {
                enqueue(id) // try the same range again
            } else if res < 0 {
                outcome = .failure(UringReadError(code: -res))
            } else if res == 0 {
                outcome = .success(read.done) // end of file
            } else {
                read.done += Int(res)
                if read.done < read.length {
                    pending[id] = read
                    enqueue(id) // short read: ask for the rest
                } else {
                    outcome = .success(read.done)
                }
            }
            if outcome != nil { pending[id] = nil }
            lock.unlock()
            if let outcome {
                if !file.usesDirectIO && !file.keepsPageCache {
                    _ = posix_fadvise(file.descriptor, off_t(read.offset), off_t(read.length), Int32(POSIX_FADV_DONTNEED))
                }
                slots.signal()
                read.completion(outcome)
            }
        }
        reaperDone.signal()
    }
}

/// The errno with which the kernel failed an io_uring read.
public struct UringReadError: Error, Sendable, Equatable {
    /// The errno value (positive).
    public let code: Int32
}
