import Foundation
import Testing
@testable import ExpertCache
@testable import MoEModels
import ModelFormats

@Suite struct TraceRecorderTests {
    private func routes(_ experts: [[Int]]) -> [TokenRouting] {
        experts.map { chosen in TokenRouting(experts: chosen, weights: chosen.map { _ in 1 / Float(chosen.count) }) }
    }

    @Test func writesTheTraceFormatStepByStep() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("recorder-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).jsonl")
        defer { try? FileManager.default.removeItem(at: url) }
        let recorder = try TraceRecorder(url: url, layerCount: 3)   // layer 1 is dense
        let input = [Float](repeating: 0, count: 8)
        try input.withUnsafeBufferPointer { x in
            let gate = x.baseAddress!
            // A two-token prefill, then one decode step: automatic numbering.
            recorder.didRoute(layer: 0, routes: routes([[1, 2], [3, 1]]), gateInput: gate, rowCount: 2)
            recorder.didRoute(layer: 2, routes: routes([[0, 5], [5, 4]]), gateInput: gate, rowCount: 2)
            recorder.didRoute(layer: 0, routes: routes([[2, 3]]), gateInput: gate, rowCount: 1)
            recorder.didRoute(layer: 2, routes: routes([[4, 0]]), gateInput: gate, rowCount: 1)
            // An engine step announcing its rows: two sequences batched.
            recorder.beginStep([.init(seq: 7, pos: 12, phase: "decode"), .init(seq: 9, pos: 0, phase: "prefill")])
            recorder.didRoute(layer: 0, routes: routes([[1, 0], [2, 5]]), gateInput: gate, rowCount: 2)
            try recorder.finish()
        }
        let trace = try RoutingTrace(contentsOf: url)
        #expect(trace.tokens == [
            TraceToken(seq: 0, pos: 0, phase: "prefill", layers: [[1, 2], nil, [0, 5]], step: 0),
            TraceToken(seq: 0, pos: 1, phase: "prefill", layers: [[3, 1], nil, [5, 4]], step: 0),
            TraceToken(seq: 0, pos: 2, phase: "decode", layers: [[2, 3], nil, [4, 0]], step: 1),
            TraceToken(seq: 7, pos: 12, phase: "decode", layers: [[1, 0], nil, nil], step: 2),
            TraceToken(seq: 9, pos: 0, phase: "prefill", layers: [[2, 5], nil, nil], step: 2),
        ])
        #expect(recorder.tokensWritten == 5)
    }

    /// The model announces each step's sequences (`willRunSequences`): rows get their
    /// sequence's id and position, a first step or a step of several rows is prefill, and a
    /// sequence that ended starts again at position 0.
    @Test func numbersRowsFromTheSequencesTheModelAnnounces() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("recorder-seq-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).jsonl")
        defer { try? FileManager.default.removeItem(at: url) }
        let recorder = try TraceRecorder(url: url, layerCount: 1)
        let input = [Float](repeating: 0, count: 8)
        try input.withUnsafeBufferPointer { x in
            let gate = x.baseAddress!
            recorder.willRunSequences([SequenceRows(id: 5, rows: 0..<2), SequenceRows(id: 9, rows: 2..<3)])
            recorder.didRoute(layer: 0, routes: routes([[1, 2], [3, 1], [0, 4]]), gateInput: gate, rowCount: 3)
            recorder.willRunSequences([SequenceRows(id: 5, rows: 0..<1), SequenceRows(id: 9, rows: 1..<2)])
            recorder.didRoute(layer: 0, routes: routes([[2, 3], [4, 0]]), gateInput: gate, rowCount: 2)
            recorder.sequenceEnded(5)
            recorder.willRunSequences([SequenceRows(id: 9, rows: 0..<1), SequenceRows(id: 5, rows: 1..<2)])
            recorder.didRoute(layer: 0, routes: routes([[1, 0], [2, 5]]), gateInput: gate, rowCount: 2)
            try recorder.finish()
        }
        let trace = try RoutingTrace(contentsOf: url)
        #expect(trace.tokens == [
            TraceToken(seq: 5, pos: 0, phase: "prefill", layers: [[1, 2]], step: 0),
            TraceToken(seq: 5, pos: 1, phase: "prefill", layers: [[3, 1]], step: 0),
            TraceToken(seq: 9, pos: 0, phase: "prefill", layers: [[0, 4]], step: 0),
            TraceToken(seq: 5, pos: 2, phase: "decode", layers: [[2, 3]], step: 1),
            TraceToken(seq: 9, pos: 1, phase: "decode", layers: [[4, 0]], step: 1),
            TraceToken(seq: 9, pos: 2, phase: "decode", layers: [[1, 0]], step: 2),
            TraceToken(seq: 5, pos: 0, phase: "prefill", layers: [[2, 5]], step: 2),
        ])
        #expect(try TraceReplay.recordedSteps(trace).map(\.count) == [3, 2, 2])
    }
}
