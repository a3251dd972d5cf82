import ExpertCache
import ModelFormats

/// Tells the expert cache which sequence each token row of a step belongs to and what it was
/// routed to, and when a sequence ends, for `--cache-policy sequence` (`SequenceAwarePolicy`):
/// the model reports a step's sequences (`willRunSequences`), then each MoE layer's routing
/// per row. Chained only when that policy runs. Engine thread.
///
/// The engine (its requests and its one-off prefill probe) and the generator report every end;
/// a sequence run by something that does not (a tool's scratch cache) is ended here once it has
/// been absent from `staleSteps` steps, so its routing does not count as running forever. That
/// is a backstop, not a substitute: until then the sequence's routing counts as running (the
/// probe's did, and slowed a one-slot server's next requests 1.3-1.5x; docs/BENCHMARKS.md,
/// "Session 34"). Ending a sequence that was only paused costs nothing but its evidence: it
/// starts afresh if it returns.
final class SequenceRoutingFeeder: RoutingObserver {
    private let cache: OffloadingExpertCache
    private let staleSteps: Int
    private var sequences: [SequenceRows] = []
    private var step = 0
    /// The step each reported, not yet ended sequence last ran in.
    private var lastSeen: [Int: Int] = [:]

    init(cache: OffloadingExpertCache, staleSteps: Int = 512) {
        precondition(staleSteps > 0)
        self.cache = cache
        self.staleSteps = staleSteps
    }

    /// Sequences reported and not yet ended.
    var trackedSequences: Int { lastSeen.count }

    func willRunSequences(_ sequences: [SequenceRows]) {
        step += 1
        self.sequences = sequences
        for sequence in sequences { lastSeen[sequence.id] = step }
        if lastSeen.count > sequences.count {
            // A scan without a filtered copy: a sequence waiting its turn is absent from most
            // steps, and this runs every decode step; the list is built only when one went stale.
            var stale: [Int] = []
            for (id, seen) in lastSeen where step - seen > staleSteps { stale.append(id) }
            for id in stale { sequenceEnded(id) }
        }
    }

    func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) {
        if !sequences.isEmpty { cache.noteSequenceRouting(layer: layer, sequences: sequences, routes: routes) }
    }

    func sequenceEnded(_ id: Int) {
        lastSeen[id] = nil
        cache.sequenceEnded(id)
    }
}
