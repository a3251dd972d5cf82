import Foundation
import Testing
import MoEModels
import TensorMath
@testable import ExpertCache

/// Counts live expert weights: the owner of every matrix the fake loader makes.
final class LiveToken: @unchecked Sendable {
    let loader: FakeLoader
    init(_ loader: FakeLoader) { self.loader = loader; loader.changeLive(+1) }
    deinit { loader.changeLive(-1) }
}

struct FakeLoadError: Error, Equatable { let key: ExpertKey }

/// An in-memory `ExpertLoader` for tests: counts loads, records their start order, can
/// block a chosen read until `open()`, add latency, and fail chosen experts. Each expert's
/// weights are a 1×1 matrix holding `layer * 1000 + expert`, so a test can check that `body`
/// got the right one.
final class FakeLoader: ExpertLoader, @unchecked Sendable {
    let bytesPerExpert: Int
    private let lock = NSLock()
    private var loadCounts: [ExpertKey: Int] = [:]
    private var startOrder: [ExpertKey] = []
    private var live = 0
    private var reading = 0
    private var readingPeak = 0
    private var livePeak = 0
    var latency: ClosedRange<Double> = 0...0
    var failing: Set<ExpertKey> = []
    private var blocked: ExpertKey?
    private let gate = DispatchSemaphore(value: 0)

    init(bytesPerExpert: Int = 100) { self.bytesPerExpert = bytesPerExpert }

    func expertByteCount(layer: Int, expert: Int) -> Int { bytesPerExpert }

    /// Makes the read of `key` wait until `open()`.
    func block(_ key: ExpertKey) { lock.withLock { blocked = key } }
    /// Lets the blocked read go.
    func open() { gate.signal() }

    func loads(_ layer: Int, _ expert: Int) -> Int { lock.withLock { loadCounts[ExpertKey(layer: layer, expert: expert)] ?? 0 } }
    var order: [ExpertKey] { lock.withLock { startOrder } }
    var peakLive: Int { lock.withLock { livePeak } }
    var liveNow: Int { lock.withLock { live } }
    /// The most reads that were running at the same time.
    var peakConcurrentReads: Int { lock.withLock { readingPeak } }

    func changeLive(_ delta: Int) {
        lock.withLock {
            live += delta
            livePeak = max(livePeak, live)
        }
    }

    func loadExpert(layer: Int, expert: Int) throws -> ExpertWeights {
        let key = ExpertKey(layer: layer, expert: expert)
        let (wait, delay, fail) = lock.withLock { () -> (Bool, Double, Bool) in
            loadCounts[key, default: 0] += 1
            startOrder.append(key)
            reading += 1
            readingPeak = max(readingPeak, reading)
            return (blocked == key, Double.random(in: latency), failing.contains(key))
        }
        defer { lock.withLock { reading -= 1 } }
        if wait { gate.wait() }
        if delay > 0 { Thread.sleep(forTimeInterval: delay) }
        if fail { throw FakeLoadError(key: key) }
        let matrix = WeightMatrix(rows: 1, cols: 1, values: [Float(layer * 1000 + expert)])
        let owned = WeightMatrix(rows: 1, cols: 1, storage: matrix.storage, owner: Owner(buffer: matrix.owner!, token: LiveToken(self)))
        return ExpertWeights(gate: owned, up: owned, down: owned)
    }

    /// Keeps the values alive and counts the weights as live until released.
    private final class Owner {
        let buffer: AnyObject
        let token: LiveToken
        init(buffer: AnyObject, token: LiveToken) { self.buffer = buffer; self.token = token }
    }
}

extension ExpertWeights {
    /// The value the fake loader stored: `layer * 1000 + expert`.
    var fakeIdentity: Int { Int(gate.row(0)[0]) }
}

/// Polls `condition` until it holds or ten seconds pass.
func eventually(_ what: String, _ condition: () -> Bool) {
    let deadline = Date().addingTimeInterval(10)
    while !condition() {
        if Date() > deadline { Issue.record("timed out waiting for: \(what)"); return }
        Thread.sleep(forTimeInterval: 0.001)
    }
}

