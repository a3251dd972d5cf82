import ModelFormats

/// Forwards every routing event to several observers in the order they were added, so that
/// `ModelRuntime.chain` can append an observer (a trace recorder, the metrics' usage counter)
/// without dropping the one already there.
final class RoutingObserverFanOut: RoutingObserver {
    private(set) var observers: [RoutingObserver]

    init(_ observers: [RoutingObserver]) { self.observers = observers }

    /// `existing` followed by `added`: `added` alone when nothing was there, and one flat list
    /// when `existing` is already a fan-out.
    static func appending(_ added: RoutingObserver, to existing: RoutingObserver?) -> RoutingObserver {
        guard let existing else { return added }
        if let fanOut = existing as? RoutingObserverFanOut {
            fanOut.observers.append(added)
            return fanOut
        }
        return RoutingObserverFanOut([existing, added])
    }

    func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) {
        for observer in observers { observer.didRoute(layer: layer, routes: routes, gateInput: gateInput, rowCount: rowCount) }
    }

    func willRunAttention(layer: Int, input: UnsafePointer<Float>, rowCount: Int) {
        for observer in observers { observer.willRunAttention(layer: layer, input: input, rowCount: rowCount) }
    }

    func willRunSequences(_ sequences: [SequenceRows]) {
        for observer in observers { observer.willRunSequences(sequences) }
    }

    func sequenceEnded(_ id: Int) {
        for observer in observers { observer.sequenceEnded(id) }
    }

    func didShadowRoute(layer: Int, routes: [TokenRouting]) {
        for observer in observers { observer.didShadowRoute(layer: layer, routes: routes) }
    }

    func didShadowGuess(layer: Int, experts: [Int]) {
        for observer in observers { observer.didShadowGuess(layer: layer, experts: experts) }
    }

    func willRunStep(lastRows: [Int]) {
        for observer in observers { observer.willRunStep(lastRows: lastRows) }
    }

    func didRunStep() {
        for observer in observers { observer.didRunStep() }
    }
}
