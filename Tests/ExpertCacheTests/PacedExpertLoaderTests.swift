import Foundation
import ModelFormats
import Testing
@testable import ExpertCache

/// The emulated disk of one fixed rate (`MOE_DISK_MBPS`): reads queue on one device clock, and
/// time the device stands idle is lost, not banked for a burst.
@Suite struct PacedExpertLoaderTests {
    /// A clock the test moves and a record of the deadlines the loader waited for.
    final class Clock: @unchecked Sendable {
        private let lock = NSLock()
        private var current: UInt64 = 0
        private var waits: [UInt64] = []
        var now: UInt64 { get { lock.withLock { current } } set { lock.withLock { current = newValue } } }
        var deadlines: [UInt64] { lock.withLock { waits } }
        func wait(until deadline: UInt64) { lock.withLock { waits.append(deadline) } }
    }

    @Test func readsQueueOnOneDeviceClockAndIdleTimeIsLost() throws {
        let base = FakeLoader(bytesPerExpert: 1_000_000), clock = Clock()
        // 1 MB at 100 MB/s: 10 ms a read.
        let paced = PacedExpertLoader(base: base, bytesPerSecond: 100e6, now: { clock.now }, sleepUntil: { clock.wait(until: $0) })
        clock.now = 1_000_000_000
        _ = try paced.loadExpert(layer: 0, expert: 1)
        _ = try paced.loadExpert(layer: 0, expert: 2)                    // asked for at the same moment: queued behind
        clock.now = 1_100_000_000                                        // 80 ms after the second read ended
        _ = try paced.loadExpert(layer: 1, expert: 0)
        #expect(clock.deadlines == [1_010_000_000, 1_020_000_000, 1_110_000_000])
        #expect(base.loads(0, 1) == 1 && base.loads(0, 2) == 1 && base.loads(1, 0) == 1)
        #expect(paced.expertByteCount(layer: 0, expert: 0) == 1_000_000)
    }

    /// What the base loader does once the bytes are in (a checksum, a decode) comes after the
    /// wait for the transfer's end, as on a real device.
    @Test func theWaitComesBeforeTheChecksum() throws {
        final class CheckingLoader: ExpertLoader, @unchecked Sendable {
            let events: Events
            init(_ events: Events) { self.events = events }
            func expertByteCount(layer: Int, expert: Int) -> Int { 1_000_000 }
            func loadExpert(layer: Int, expert: Int) throws -> ExpertWeights { try loadExpert(layer: layer, expert: expert) {} }
            func loadExpert(layer: Int, expert: Int, transferred: () -> Void) throws -> ExpertWeights {
                events.append("bytes")
                transferred()
                events.append("checked")
                return try FakeLoader(bytesPerExpert: 1_000_000).loadExpert(layer: layer, expert: expert)
            }
        }
        let events = Events()
        let paced = PacedExpertLoader(base: CheckingLoader(events), bytesPerSecond: 100e6, now: { 0 },
                                      sleepUntil: { events.append("wait until \($0)") })
        _ = try paced.loadExpert(layer: 0, expert: 0)
        #expect(events.all == ["bytes", "wait until 10000000", "checked"])
    }

    final class Events: @unchecked Sendable {
        private let lock = NSLock()
        private var list: [String] = []
        func append(_ event: String) { lock.withLock { list.append(event) } }
        var all: [String] { lock.withLock { list } }
    }

    @Test func theRealClockWaitsForTheSpan() throws {
        // 1 MB at 200 MB/s: each read ends at least 5 ms after the one before it.
        let paced = PacedExpertLoader(base: FakeLoader(bytesPerExpert: 1_000_000), bytesPerSecond: 200e6)
        let start = DispatchTime.now().uptimeNanoseconds
        for expert in 0..<4 { _ = try paced.loadExpert(layer: 0, expert: expert) }
        #expect(DispatchTime.now().uptimeNanoseconds - start >= 20_000_000)
    }

    @Test func theRateComesFromTheEnvironmentOrIsAClearError() throws {
        #expect(try PacedExpertLoader.environmentRate(nil) == nil)
        #expect(try PacedExpertLoader.environmentRate("") == nil)
        #expect(try PacedExpertLoader.environmentRate("600") == 600e6)
        for bad in ["0", "-5", "fast", "inf"] {
            #expect(throws: ExpertCacheError.self) { try PacedExpertLoader.environmentRate(bad) }
        }
    }
}
