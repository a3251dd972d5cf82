#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One mutex with two condition variables: one the reader threads sleep on (a read was
/// queued), one the requesters sleep on (a read finished, or room was freed).
///
/// With a single condition every unpin woke all reader threads too, which found nothing to
/// do and slept again: on two cores those wake-ups were a quarter of the CPU time of batched
/// decoding with every expert resident (perf: futex wake/wait in `readerLoop`).
final class CacheLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let workQueued = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let progressMade = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Requesters inside `waitForProgress`; guarded by the mutex.
    private var waitingRequesters = 0

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(workQueued, nil)
        pthread_cond_init(progressMade, nil)
    }

    deinit {
        pthread_cond_destroy(progressMade)
        pthread_cond_destroy(workQueued)
        pthread_mutex_destroy(mutex)
        progressMade.deallocate()
        workQueued.deallocate()
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }

    /// Runs `body` with the mutex held.
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }

    /// A reader thread sleeps until reads are queued (or the cache closes). Mutex held.
    func waitForWork() { pthread_cond_wait(workQueued, mutex) }

    /// A requester sleeps until a read finishes or room is freed. Mutex held.
    func waitForProgress() {
        waitingRequesters += 1
        pthread_cond_wait(progressMade, mutex)
        waitingRequesters -= 1
    }

    /// Wakes up to `count` readers for newly queued reads. Mutex held.
    func wakeReaders(_ count: Int = 1) {
        if count == 1 { pthread_cond_signal(workQueued) } else if count > 1 { pthread_cond_broadcast(workQueued) }
    }

    /// Wakes the requesters, if any is waiting. Mutex held.
    func wakeRequesters() {
        if waitingRequesters > 0 { pthread_cond_broadcast(progressMade) }
    }

    /// Wakes everyone (closing). Mutex held.
    func wakeAll() {
        pthread_cond_broadcast(workQueued)
        pthread_cond_broadcast(progressMade)
    }
}
