import ModelFormats
import MoEModels

/// Per-request record of the experts a request's generated tokens were routed to (the chat
/// page's "experts" line, `GenerationRequest.recordExperts`). During a step that has such a
/// request it sits in front of the model's routing observer (which it forwards to) and counts,
/// for each sequence of the step that asked, its rows' routes per layer. Engine thread only.
final class RequestExpertRecorder: RoutingObserver {
    let layerCount: Int
    let expertCount: Int
    private var next: RoutingObserver?
    /// Per step: the row range of each sequence that records, and its counts `[layer * experts + expert]`.
    private var spans: [(rows: Range<Int>, counts: [Int32])] = []
    private var spanOfInput: [Int] = []

    init(layerCount: Int, expertCount: Int) {
        self.layerCount = layerCount
        self.expertCount = expertCount
    }

    /// Runs `body` (the step's forward pass over `inputs`) counting the routes of the inputs
    /// whose `rows` flag is set; without any, `body` runs with the model's observer untouched.
    func recording<T>(_ model: TransformerModel, rows: [Bool], inputs: [SequenceInput], _ body: () throws -> T) rethrows -> T {
        spans.removeAll(keepingCapacity: true)
        spanOfInput.removeAll(keepingCapacity: true)
        guard rows.contains(true), expertCount > 0 else { return try body() }
        var first = 0
        for (wanted, input) in zip(rows, inputs) {
            spanOfInput.append(wanted ? spans.count : -1)
            if wanted { spans.append((first..<first + input.tokens.count, [Int32](repeating: 0, count: layerCount * expertCount))) }
            first += input.tokens.count
        }
        next = model.routingObserver
        model.routingObserver = self
        defer { model.routingObserver = next; next = nil }
        return try body()
    }

    /// Adds the last step's counts of input `row` (if it recorded) to `counts`.
    func add(row input: Int, into counts: inout [Int32]) {
        guard input < spanOfInput.count, spanOfInput[input] >= 0 else { return }
        let span = spans[spanOfInput[input]].counts
        if counts.isEmpty { counts = span; return }
        for i in counts.indices { counts[i] += span[i] }
    }

    /// `[layer][expert]` from a flat count array (empty stays empty).
    func table(_ counts: [Int32]) -> [[Int32]] {
        guard counts.count == layerCount * expertCount else { return [] }
        return (0..<layerCount).map { Array(counts[$0 * expertCount..<($0 + 1) * expertCount]) }
    }

    func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) {
        for s in spans.indices {
            for row in spans[s].rows where row < routes.count {
                for expert in routes[row].experts where expert >= 0 && expert < expertCount {
                    spans[s].counts[layer * expertCount + expert] += 1
                }
            }
        }
        next?.didRoute(layer: layer, routes: routes, gateInput: gateInput, rowCount: rowCount)
    }

    func willRunAttention(layer: Int, input: UnsafePointer<Float>, rowCount: Int) {
        next?.willRunAttention(layer: layer, input: input, rowCount: rowCount)
    }

    func willRunStep(lastRows: [Int]) { next?.willRunStep(lastRows: lastRows) }

    func didRunStep() { next?.didRunStep() }

    func willRunSequences(_ sequences: [SequenceRows]) { next?.willRunSequences(sequences) }

    func sequenceEnded(_ id: Int) { next?.sequenceEnded(id) }
    func didShadowRoute(layer: Int, routes: [TokenRouting]) { next?.didShadowRoute(layer: layer, routes: routes) }
    func didShadowGuess(layer: Int, experts: [Int]) { next?.didShadowGuess(layer: layer, experts: experts) }
}
