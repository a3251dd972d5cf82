import Foundation

/// A fixed-size, 64-byte-aligned, zero-initialised buffer of `Element`s.
///
/// 64 bytes is one cache line and one AVX-512 register, so SIMD loads never straddle lines and
/// O_DIRECT reads (which need 4 KiB alignment) use `AlignedBuffer(count:alignment:)` with 4096.
/// The buffer owns its memory; views into it must not outlive it.
public final class AlignedBuffer<Element>: @unchecked Sendable {
    /// Number of elements.
    public let count: Int
    /// Alignment of `pointer`, in bytes.
    public let alignment: Int
    /// Start of the storage.
    public let pointer: UnsafeMutablePointer<Element>

    /// Allocates `count` elements aligned to `alignment` bytes (a power of two ≥ 16), zeroed
    /// unless `zeroed` is false (for buffers a read or a decoder overwrites at once: zeroing
    /// would be one more pass over memory).
    /// With a `pool`, a mapped buffer is taken from the pool when one of the same size is
    /// there and given back to it on release (see `BufferPool`).
    public init(count: Int, alignment: Int = 64, zeroed: Bool = true, pool: BufferPool? = nil) {
        precondition(count >= 0 && alignment >= 16 && alignment & (alignment - 1) == 0)
        BufferAllocations.record()
        self.count = count
        self.alignment = alignment
        let bytes = max(1, count * MemoryLayout<Element>.stride)
        let mappable = bytes >= AlignedBuffer.mappingThreshold && alignment <= AlignedBuffer.pageSize
        if mappable, let pool, let recycled = pool.take(bytes: bytes) {
            if zeroed { recycled.initializeMemory(as: UInt8.self, repeating: 0, count: bytes) }
            pointer = recycled.bindMemory(to: Element.self, capacity: max(count, 1))
            mappedBytes = bytes
            self.pool = pool
            return
        }
        self.pool = mappable ? pool : nil
        // Buffers of 64 KiB and more (experts, KV caches, dense matrices) are mapped straight from the
        // kernel and unmapped on release. Through malloc, glibc raises its mmap threshold
        // after the first large free and then serves multi-megabyte blocks from heap arenas it
        // never returns, so an expert cache evicting 12 MB experts grew the resident set 30%
        // past its budget. Fresh mappings are zero-filled and cost no memory until touched.
        let raw: UnsafeMutableRawPointer
        if mappable, let mapped = BufferPool.mapFresh(bytes: bytes) {
            raw = mapped
            mappedBytes = bytes
        } else {
            raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: alignment)
            if zeroed { raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes) }
            mappedBytes = 0
        }
        pointer = raw.bindMemory(to: Element.self, capacity: max(count, 1))
    }

    /// Buffers of at least this many bytes are their own memory mapping.
    public static var mappingThreshold: Int { 64 << 10 }
    private static var pageSize: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }
    /// The mapping's length, or 0 for a malloc'd buffer.
    private let mappedBytes: Int
    /// Where a mapped buffer goes on release instead of being unmapped, if it has room.
    private let pool: BufferPool?

    /// Copies `elements` into a new aligned buffer.
    public convenience init(_ elements: [Element], alignment: Int = 64) {
        self.init(count: elements.count, alignment: alignment)
        elements.withUnsafeBufferPointer { source in
            if let base = source.baseAddress { pointer.update(from: base, count: elements.count) }
        }
    }

    deinit {
        if mappedBytes > 0 {
            if let pool { pool.release(UnsafeMutableRawPointer(pointer), bytes: mappedBytes) } else { munmap(UnsafeMutableRawPointer(pointer), mappedBytes) }
        } else {
            UnsafeMutableRawPointer(pointer).deallocate()
        }
    }

    /// Size of the storage in bytes.
    public var byteCount: Int { count * MemoryLayout<Element>.stride }

    /// The pool this buffer's mapping returns to on release (nil: none, or not a mapping).
    /// Only such a buffer may be registered with a reader: its unmapping passes through the
    /// pool's `unmapObserver`.
    public var returnsTo: BufferPool? { mappedBytes > 0 ? pool : nil }
    /// The length of the buffer's own mapping (0 for a malloc'd buffer).
    public var mappingByteCount: Int { mappedBytes }

    /// The elements as a buffer pointer.
    public var buffer: UnsafeMutableBufferPointer<Element> { UnsafeMutableBufferPointer(start: pointer, count: count) }

    /// Element access (bounds-checked in debug builds only).
    public subscript(index: Int) -> Element {
        get { assert(index >= 0 && index < count); return pointer[index] }
        set { assert(index >= 0 && index < count); pointer[index] = newValue }
    }

    /// A copy of the elements as an array.
    public var array: [Element] { Array(buffer) }
}

/// Counts the `AlignedBuffer`s each thread makes (malloc'd, mapped or taken from a pool), so
/// a test can check that a decode step makes none: the forward pass reuses its workspace.
/// Per thread, so that tests running beside it do not disturb the count.
public enum BufferAllocations {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        // Not inside `precondition`: this module builds with -Ounchecked, which drops the
        // condition unevaluated, and key 0 belongs to someone else.
        let status = pthread_key_create(&key, nil)
        if status != 0 { fatalError("pthread_key_create failed: \(status)") }
        return key
    }()

    /// Buffers the calling thread has made so far.
    public static var onCurrentThread: Int { Int(bitPattern: pthread_getspecific(key)) }

    static func record() { pthread_setspecific(key, UnsafeRawPointer(bitPattern: onCurrentThread + 1)) }
}

/// A few mapped buffers kept for reuse instead of being unmapped. An O_DIRECT read into fresh
/// memory makes the kernel fault in and zero every page first: on a 13.5 GB model that zeroing
/// was 59% of all CPU time (perf). An expert cache evicts one expert for each one it loads, so
/// handing the evicted expert's buffer to the next read removes nearly all of it. The pool is
/// bounded (`maxBytes`) and normally empty: a buffer comes back on eviction and leaves on the
/// next load.
///
/// A cache that reserves room for many reads at once (a layer's misses in a large batch) evicts
/// many experts before the first of those reads starts. Their buffers may wait here for those
/// reads: the cache credits the bytes it has reserved for reads not yet started
/// (`expectReads`), each buffer taken uses up its size of the credit, and the pool then holds
/// up to `maxBytes` plus the credit. The credited bytes are already charged to the cache's
/// budget and have no memory of their own yet, so the process maps no more than before: the
/// pooled buffers stand in for the reads' buffers.
public final class BufferPool: @unchecked Sendable {
    private let lock = NSLock()
    private var free: [Int: [UnsafeMutableRawPointer]] = [:]
    private var pooledBytes = 0
    /// Bytes of reads the pool's owner has reserved room for and not yet started.
    private var credit = 0
    /// Bytes of warmed buffers (`addWarmed`) the pool may hold beyond `maxBytes` and the credit:
    /// what was warmed, less every buffer taken since.
    private var warmAllowance = 0
    /// The most the pool holds at once without credit.
    public let maxBytes: Int

    public init(maxBytes: Int) { self.maxBytes = maxBytes }

    deinit {
        let observer = unmapObserver
        for (bytes, pointers) in free {
            for p in pointers {
                observer?(p, bytes)
                munmap(p, bytes)
            }
        }
    }

    /// Told of every mapping of this pool's buffers just before it is unmapped (the expert store
    /// unregisters it from its io_uring reader there: a registered mapping's pages stay pinned
    /// until they are unregistered). Set once, before the pool hands out buffers.
    public var unmapObserver: (@Sendable (UnsafeMutableRawPointer, Int) -> Void)? {
        get { lock.lock(); defer { lock.unlock() }; return observer }
        set { lock.lock(); observer = newValue; lock.unlock() }
    }
    private var observer: (@Sendable (UnsafeMutableRawPointer, Int) -> Void)?

    /// Bytes held now.
    public var heldBytes: Int { lock.lock(); defer { lock.unlock() }; return pooledBytes }

    /// Bytes of credit now (for tests).
    public var creditBytes: Int { lock.lock(); defer { lock.unlock() }; return credit }
    /// Bytes of warmed buffers the pool may still hold beyond `maxBytes` (see `addWarmed`).
    public var warmBytes: Int { lock.lock(); defer { lock.unlock() }; return warmAllowance }
    /// Buffers handed out again since the pool was made.
    public var reusedCount: Int { lock.lock(); defer { lock.unlock() }; return reused }
    private var reused = 0

    /// Adds `bytes` of reads about to be made into this pool's buffers (negative: reads that will
    /// not be made after all). Call it before evicting what makes room for them, so that the
    /// evicted buffers can wait here.
    public func expectReads(bytes: Int) {
        lock.lock(); defer { lock.unlock() }
        credit = max(0, credit + bytes)
    }

    /// No reads are expected: the credit goes, and the pool keeps no more than `maxBytes` (and
    /// the warmed buffers not yet taken).
    public func noReadsExpected() {
        lock.lock()
        credit = 0
        trimLocked()
    }

    /// Adds a mapping of `bytes` made ahead of need (`mapFresh`, then `populate`) for later
    /// reads to take. The pool may hold it beyond `maxBytes`: each buffer taken afterwards, warmed
    /// or not, lowers that allowance by its size. The owner warms only into room its budget has
    /// (an expert cache: its budget less what it holds), so the warmed buffers stand in for
    /// buffers the reads would map anyway.
    public func addWarmed(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
        lock.lock(); defer { lock.unlock() }
        free[bytes, default: []].append(pointer)
        pooledBytes += bytes
        warmAllowance += bytes
    }

    /// Gives up the warmed buffers not yet taken (the budget they stood in for shrank): the pool
    /// keeps no more than `maxBytes` and the credit.
    public func dropWarmed() {
        lock.lock()
        warmAllowance = 0
        trimLocked()
    }

    /// Unmaps what the pool holds beyond its room; unlocks.
    private func trimLocked() {
        var excess: [(UnsafeMutableRawPointer, Int)] = []
        while pooledBytes > maxBytes + credit + warmAllowance, let bytes = free.first(where: { !$0.value.isEmpty })?.key, let p = free[bytes]?.popLast() {
            pooledBytes -= bytes
            excess.append((p, bytes))
        }
        let observer = self.observer
        lock.unlock()
        for (p, bytes) in excess {
            observer?(p, bytes)
            munmap(p, bytes)
        }
    }

    /// A pooled mapping of exactly `bytes`, or nil; either way the buffer being made uses up
    /// `bytes` of credit.
    func take(bytes: Int) -> UnsafeMutableRawPointer? {
        lock.lock(); defer { lock.unlock() }
        credit = max(0, credit - bytes)
        warmAllowance = max(0, warmAllowance - bytes)
        guard let p = free[bytes]?.popLast() else { return nil }
        pooledBytes -= bytes
        reused += 1
        return p
    }

    /// Keeps the mapping if there is room, else unmaps it (telling `unmapObserver` first).
    func release(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
        lock.lock()
        if pooledBytes + bytes <= maxBytes + credit + warmAllowance {
            free[bytes, default: []].append(pointer)
            pooledBytes += bytes
            lock.unlock()
            return
        }
        let observer = self.observer
        lock.unlock()
        observer?(pointer, bytes)
        munmap(pointer, bytes)
    }
    /// A fresh anonymous mapping of `bytes` (nil if the kernel refuses), in 2 MiB pages where the
    /// kernel allows it for multi-megabyte buffers: a 12 MB expert then costs a handful of page
    /// faults instead of 3,000. Its pages cost nothing until touched.
    public static func mapFresh(bytes: Int) -> UnsafeMutableRawPointer? {
        guard let mapped = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), mapped != MAP_FAILED else { return nil }
        if bytes >= 2 << 20 { _ = madvise(mapped, bytes, Int32(MADV_HUGEPAGE)) }
        return mapped
    }

    /// Faults in (and so zeroes) every page of a fresh mapping now, in one call where the kernel
    /// has `MADV_POPULATE_WRITE` (Linux 5.14), else by writing one byte per page. On a virtual
    /// machine whose host backs guest memory on first touch this runs at about 0.3 GB/s against
    /// 8 GB/s for memory the guest touched recently (measured here, docs/BENCHMARKS.md "Session
    /// 33"), so it is worth doing before a request needs the buffer.
    public static func populate(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
        let populateWrite: Int32 = 23   // MADV_POPULATE_WRITE; Glibc may not export it
        if madvise(pointer, bytes, populateWrite) == 0 { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        var offset = 0
        while offset < bytes {
            pointer.storeBytes(of: 0, toByteOffset: offset, as: UInt8.self)
            offset += page
        }
    }
}
