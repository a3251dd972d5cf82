import ExpertCache
import ModelFormats

/// Tells the expert cache which sequence each token row of a step belongs to and what it was
/// routed to, and when a sequence ends, for `--cache-policy sequence` (`SequenceAwarePolicy`):
/// the model reports a step's sequences (`willRunSequences`), then each MoE layer's routing
/// per row. Chained only when that policy runs. Engine thread.
final class SequenceRoutingFeeder: RoutingObserver {
    private let cache: OffloadingExpertCache
    private var sequences: [SequenceRows] = []

    init(cache: OffloadingExpertCache) { self.cache = cache }

    func willRunSequences(_ sequences: [SequenceRows]) { self.sequences = sequences }

    func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) {
        var tokens: [(sequence: Int, experts: [Int])] = []
        tokens.reserveCapacity(rowCount)
        for sequence in sequences {
            for row in sequence.rows where row < routes.count {
                var distinct: [Int] = []
                for expert in routes[row].experts where expert >= 0 && !distinct.contains(expert) { distinct.append(expert) }
                tokens.append((sequence.id, distinct))
            }
        }
        if !tokens.isEmpty { cache.noteSequenceRouting(layer: layer, tokens: tokens) }
    }

    func sequenceEnded(_ id: Int) { cache.sequenceEnded(id) }
}
