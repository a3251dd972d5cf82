import Foundation
import ModelFormats

/// Records routing decisions as a trace in the `bench trace` format, one JSON line per token:
/// `{"seq": s, "pos": p, "phase": ..., "layers": [[e1, ...], null, ...], "step": n}`, with `null`
/// for layers without routed experts and `step` counting the steps recorded.
///
/// The model reports routing per layer for all rows of a step, so the recorder collects a
/// step's rows and writes them when the next step starts (a layer index not above the last
/// one seen) or on `finish()`. Which sequence and position each row is comes from the model's
/// `willRunSequences` (a sequence's first step, and any step where it has several rows, is
/// prefill; a single row after that is decode) or from `beginStep`; otherwise the recorder
/// assumes one sequence whose first step is the prefill and whose later single-row steps are
/// decode steps. A trace of a batching engine's steps replays as recorded with
/// `bench trace --as-recorded`.
public final class TraceRecorder: RoutingObserver {
    /// What the trace says about one row of a step.
    public struct Row: Sendable, Equatable {
        /// Sequence id.
        public var seq: Int
        /// Position in the sequence.
        public var pos: Int
        /// `prefill`, `decode` or `unknown`.
        public var phase: String

        /// Describes one token row.
        public init(seq: Int, pos: Int, phase: String) {
            self.seq = seq
            self.pos = pos
            self.phase = phase
        }
    }

    private let handle: FileHandle
    private let layerCount: Int
    private var stepRows: [Row] = []
    private var stepLayers: [[[Int]?]] = []   // [row][layer]
    private var lastLayer = -1
    private var announced: [Row]?
    private var autoSequence = 0
    private var autoPosition = 0
    /// Rows recorded so far per running sequence (`willRunSequences`): the next row's position.
    private var positions: [Int: Int] = [:]
    private var stepIndex = 0
    /// Tokens written so far.
    public private(set) var tokensWritten = 0

    /// Creates (or truncates) `url` for a model of `layerCount` layers.
    public init(url: URL, layerCount: Int) throws {
        guard FileManager.default.createFile(atPath: url.path, contents: nil) else {
            throw TraceError("\(url.path): cannot create the trace file")
        }
        handle = try FileHandle(forWritingTo: url)
        self.layerCount = layerCount
    }

    /// Says which sequence and position each row of the next step is.
    public func beginStep(_ rows: [Row]) {
        flush()
        announced = rows
    }

    public func willRunSequences(_ sequences: [SequenceRows]) {
        var rows: [Row] = []
        for sequence in sequences.sorted(by: { $0.rows.lowerBound < $1.rows.lowerBound }) {
            let start = positions[sequence.id] ?? 0
            let phase = start == 0 || sequence.rows.count > 1 ? "prefill" : "decode"
            rows += (0..<sequence.rows.count).map { Row(seq: sequence.id, pos: start + $0, phase: phase) }
            positions[sequence.id] = start + sequence.rows.count
        }
        beginStep(rows)
    }

    public func sequenceEnded(_ id: Int) { positions[id] = nil }

    /// Starts a new sequence for the automatic numbering (a new prompt's first step is its
    /// prefill).
    public func beginSequence(_ seq: Int) {
        flush()
        autoSequence = seq
        autoPosition = 0
    }

    public func didRoute(layer: Int, routes: [TokenRouting], gateInput: UnsafePointer<Float>, rowCount: Int) {
        if layer <= lastLayer || stepLayers.count != rowCount { startStep(rowCount: rowCount) }
        lastLayer = layer
        for (row, routing) in routes.enumerated() where layer < layerCount {
            stepLayers[row][layer] = routing.experts
        }
    }

    private func startStep(rowCount: Int) {
        flush()
        if let announced, announced.count == rowCount {
            stepRows = announced
        } else {
            let phase = autoPosition == 0 ? "prefill" : rowCount == 1 ? "decode" : "unknown"
            stepRows = (0..<rowCount).map { Row(seq: autoSequence, pos: autoPosition + $0, phase: phase) }
            autoPosition += rowCount
        }
        announced = nil
        stepLayers = Array(repeating: Array(repeating: nil, count: layerCount), count: rowCount)
    }

    /// Writes the step collected so far.
    public func flush() {
        guard !stepLayers.isEmpty else { return }
        var text = ""
        for (row, layers) in zip(stepRows, stepLayers) {
            let layerText = layers.map { experts in
                experts.map { "[" + $0.map(String.init).joined(separator: ",") + "]" } ?? "null"
            }.joined(separator: ",")
            text += "{\"seq\":\(row.seq),\"pos\":\(row.pos),\"phase\":\"\(row.phase)\",\"layers\":[\(layerText)],\"step\":\(stepIndex)}\n"
        }
        handle.write(Data(text.utf8))
        stepIndex += 1
        tokensWritten += stepLayers.count
        stepLayers = []
        lastLayer = -1
    }

    /// Writes what is pending and closes the file.
    public func finish() throws {
        flush()
        try handle.close()
    }
}
