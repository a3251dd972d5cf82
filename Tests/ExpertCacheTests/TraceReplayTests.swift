import Foundation
import Testing
@testable import ExpertCache
import TensorMath

private func trace(_ rows: [[[Int]?]]) -> RoutingTrace {
    RoutingTrace(tokens: rows.enumerated().map { TraceToken(seq: 0, pos: $0.offset, phase: "decode", layers: $0.element) })
}

/// A random trace: skewed routing over `experts` experts, `topK` per token, layer 0 null.
private func randomTrace(_ rng: inout SplitMix64, tokens: Int, layers: Int, experts: Int, topK: Int) -> RoutingTrace {
    trace((0..<tokens).map { _ in
        [nil] + (1..<layers).map { _ in
            var chosen: [Int] = []
            while chosen.count < topK {
                // Squaring a uniform draw skews towards low indices: a few popular experts.
                let u = Double.random(in: 0..<1, using: &rng)
                let e = Int(u * u * Double(experts))
                if !chosen.contains(e) { chosen.append(e) }
            }
            return chosen
        }
    })
}

@Suite struct TraceReplayTests {
    @Test func parsesTheFormatLeniently() throws {
        let text = """
        {"seq": 3, "pos": 7, "phase": "decode", "layers": [null, [1, 2]], "extra": {"x": 1}}

        {"layers": [[0], null, [4, 4, 5]]}
        """
        let parsed = try RoutingTrace(jsonLines: Data(text.utf8))
        #expect(parsed.tokens.count == 2)
        #expect(parsed.tokens[0] == TraceToken(seq: 3, pos: 7, phase: "decode", layers: [nil, [1, 2]]))
        #expect(parsed.tokens[1].phase == "unknown")
        #expect(parsed.layerCount == 3 && parsed.recordedLayers == [0, 1, 2])
        #expect(parsed.maxExpertsPerToken == 2)
        #expect(throws: TraceError.self) { try RoutingTrace(jsonLines: Data("{\"seq\": 1}\n".utf8)) }
    }

    @Test func handComputedLRUAndBelady() throws {
        // One layer, C = 2. LRU misses everything; Belady keeps 1 for t2 and 3 for t4.
        let t = trace([[[1, 2]], [[3]], [[1]], [[2]], [[3]]])
        let lru = try TraceReplay.run(t, policy: LRUPolicy(), cachePerLayer: 2)
        let belady = try TraceReplay.run(t, policy: BeladyPolicy(), cachePerLayer: 2)
        #expect(lru.requests == 6 && lru.hits == 0)
        #expect(belady.hits == 2)
        #expect(belady.perLayer == [2.0 / 6.0])
    }

    @Test func aTokensExpertsAreResidentTogether() throws {
        // t2 = [3, 2]: 2 is resident and pinned, so 3's miss evicts 1 although 1 is more
        // recent than 2 under LRU. Requests: 2 + 1 + 2 + 1 = 6; hits: 1 (t1), 2 (t2).
        let t = trace([[[1, 2]], [[1]], [[3, 2]], [[1]]])
        let lru = try TraceReplay.run(t, policy: LRUPolicy(), cachePerLayer: 2)
        #expect(lru.requests == 6 && lru.hits == 2)
        // Repeats within a token count once; null layers are skipped.
        let repeated = trace([[[5, 5, 6], nil], [[6], nil]])
        let result = try TraceReplay.run(repeated, policy: LRUPolicy(), cachePerLayer: 2)
        #expect(result.requests == 3 && result.hits == 1 && result.perLayer == [1.0 / 3.0, nil])
        #expect(throws: TraceError.self) { try TraceReplay.run(t, policy: LRUPolicy(), cachePerLayer: 1) }
    }

    @Test func cachesPersistAcrossSequences() throws {
        var t = trace([[[1]], [[1]]])
        t.tokens[1].seq = 1
        t.tokens[1].pos = 0
        #expect(try TraceReplay.run(t, policy: LRUPolicy(), cachePerLayer: 1).hits == 1)
    }

    @Test(arguments: 0..<24)
    func beladyIsNeverBeaten(seed: Int) throws {
        var rng = SplitMix64(seed: UInt64(seed) &* 7919 &+ 1)
        let experts = Int.random(in: 4...12, using: &rng)
        let topK = Int.random(in: 1...min(3, experts - 1), using: &rng)
        let capacity = Int.random(in: topK..<experts, using: &rng)
        let t = randomTrace(&rng, tokens: 120, layers: 4, experts: experts, topK: topK)
        let belady = try TraceReplay.run(t, policy: BeladyPolicy(), cachePerLayer: capacity)
        for policy in PolicyChoice.allCases.map({ $0.make(layerCount: 4, hotPerLayer: capacity / 2) }) {
            let result = try TraceReplay.run(t, policy: policy, cachePerLayer: capacity)
            #expect(result.hits <= belady.hits, "\(policy.name) beat Belady (seed \(seed))")
            for (mine, best) in zip(result.perLayer, belady.perLayer) {
                #expect((mine ?? 0) <= (best ?? 0) + 1e-12, "\(policy.name) beat Belady in a layer (seed \(seed))")
            }
        }
        let beladyGlobal = try TraceReplay.run(t, policy: BeladyPolicy(), cachePerLayer: capacity, pool: .global)
        #expect(beladyGlobal.hits >= belady.hits, "a shared pool can always do what partitions do")
        for choice in [PolicyChoice.lru, .fate, .lfu] {
            let result = try TraceReplay.run(t, policy: choice.make(layerCount: 4, hotPerLayer: 1, shallowLayerCount: 2),
                                             cachePerLayer: capacity, pool: .global, floorSlots: topK)
            #expect(result.hits <= beladyGlobal.hits, "\(choice) beat global Belady (seed \(seed))")
        }
    }

    /// Lanes of a batched replay: sequence i mod S, copies starting at evenly spaced positions
    /// and wrapping round, each lane its own sequence to the policy; decode tokens only.
    @Test func batchedStepsInterleaveTheSequencesDecodeTokens() throws {
        let a = (0..<4).map { TraceToken(seq: 7, pos: $0, phase: $0 == 0 ? "prefill" : "decode", layers: [[10 + $0]]) }
        let b = (0..<5).map { TraceToken(seq: 3, pos: $0, phase: "decode", layers: [[20 + $0]]) }
        let t = RoutingTrace(tokens: a + b)
        let steps = try TraceReplay.batchedSteps(t, sequences: 3)
        #expect(steps.count == 3) // the shortest sequence has 3 decode tokens
        #expect(steps.allSatisfy { $0.map(\.seq) == [0, 1, 2] })
        // Lane 0: a's decode tokens; lane 1: b's; lane 2: a again from its second copy's start (3 / 2 = 1), wrapping.
        #expect(steps.map { $0[0].layers[0]! } == [[11], [12], [13]])
        #expect(steps.map { $0[1].layers[0]! } == [[20], [21], [22]])
        #expect(steps.map { $0[2].layers[0]! } == [[12], [13], [11]])
        #expect(throws: TraceError.self) { try TraceReplay.batchedSteps(t, sequences: 0) }
    }

    /// Two sequences of one layer, each using its own two experts twice: the first step misses
    /// the union of four, the second hits it; a pool too small for a union is a clear error.
    @Test func aBatchRequestsEachLayersUnionOnce() throws {
        let t = RoutingTrace(tokens: [
            TraceToken(seq: 0, pos: 0, phase: "decode", layers: [[0, 1]]), TraceToken(seq: 0, pos: 1, phase: "decode", layers: [[1, 0]]),
            TraceToken(seq: 1, pos: 0, phase: "decode", layers: [[2, 3]]), TraceToken(seq: 1, pos: 1, phase: "decode", layers: [[3, 2]]),
        ])
        let result = try TraceReplay.runBatched(t, sequences: 2, policy: LRUPolicy(), cachePerLayer: 4)
        #expect(result.steps == 2 && result.requests == 8 && result.hits == 4)
        #expect(result.unionPerLayer == 4 && result.missesPerToken == 1)
        #expect(throws: TraceError.self) { try TraceReplay.runBatched(t, sequences: 2, policy: LRUPolicy(), cachePerLayer: 3) }
        // One sequence: the sequences one after another, a token a step.
        #expect(try TraceReplay.batchedSteps(t, sequences: 1).map { $0.map(\.seq) } == [[0], [0], [1], [1]])
        let alone = try TraceReplay.runBatched(t, sequences: 1, policy: LRUPolicy(), cachePerLayer: 2)
        #expect(alone.steps == 4 && alone.requests == 8 && alone.hits == 4 && alone.missesPerToken == 1)
    }

    /// A trace recorded step by step replays its steps as they ran: a prefill step requests
    /// its rows' union once, and hits count over every step and over the decode window (the
    /// steps after the last prefill). One layer, three slots, by hand:
    /// step 0 (seq 0 prefill, rows [0,1] and [1,2]) misses 0, 1, 2; step 1 (seq 1 prefill, [3])
    /// misses 3 and LRU evicts 0; step 2 (decode [0] and [3]) hits 3, misses 0 (evicting 1);
    /// step 3 (decode [2] and [1]) hits 2, misses 1. Belady keeps 0 at step 1 and misses only one of
    /// step 3's two.
    @Test func aRecordedTraceReplaysItsStepsAsTheyRan() throws {
        let t = RoutingTrace(tokens: [
            TraceToken(seq: 0, pos: 0, phase: "prefill", layers: [[0, 1]], step: 0),
            TraceToken(seq: 0, pos: 1, phase: "prefill", layers: [[1, 2]], step: 0),
            TraceToken(seq: 1, pos: 0, phase: "prefill", layers: [[3]], step: 1),
            TraceToken(seq: 0, pos: 2, phase: "decode", layers: [[0]], step: 2),
            TraceToken(seq: 1, pos: 1, phase: "decode", layers: [[3]], step: 2),
            TraceToken(seq: 0, pos: 3, phase: "decode", layers: [[2]], step: 3),
            TraceToken(seq: 1, pos: 2, phase: "decode", layers: [[1]], step: 3),
        ])
        #expect(try TraceReplay.recordedSteps(t).map { $0.map(\.pos) } == [[0, 1], [0], [2, 1], [3, 2]])
        let lru = try TraceReplay.runRecorded(t, policy: LRUPolicy(), cachePerLayer: 3)
        #expect(lru.decodeWindowStart == 2)
        #expect(lru.all.requests == 8 && lru.all.hits == 2)
        #expect(lru.decodeWindow.requests == 4 && lru.decodeWindow.hits == 2 && lru.decodeWindow.hitRate == 0.5)
        let belady = try TraceReplay.runRecorded(t, policy: BeladyPolicy(), cachePerLayer: 3)
        #expect(belady.all.hits == 3 && belady.decodeWindow.hits == 3)
        // A prefill union wider than the pool is a clear error.
        #expect(throws: TraceError.self) { try TraceReplay.runRecorded(t, policy: LRUPolicy(), cachePerLayer: 2) }
        // Without steps, a prompt's prefill tokens are one step and each decode token its own;
        // some tokens with a step and some without is an error.
        let unstepped = RoutingTrace(tokens: t.tokens.map { var token = $0; token.step = nil; return token })
        #expect(try TraceReplay.recordedSteps(unstepped).map { $0.map(\.pos) } == [[0, 1], [0], [2], [1], [3], [2]])
        var mixed = t
        mixed.tokens[3].step = nil
        #expect(throws: TraceError.self) { try TraceReplay.recordedSteps(mixed) }
    }

    @Test(arguments: 0..<8)
    func beladyIsNeverBeatenInABatch(seed: Int) throws {
        var rng = SplitMix64(seed: UInt64(seed) &* 104_729 &+ 3)
        let experts = Int.random(in: 8...16, using: &rng)
        // Four sequences with routing of their own.
        let t = RoutingTrace(tokens: (0..<4).flatMap { s in
            randomTrace(&rng, tokens: 30, layers: 4, experts: experts, topK: 2).tokens.map { token in
                var token = token
                token.seq = s
                return token
            }
        })
        let capacity = experts - 1
        for sequences in [1, 3, 8] {
            let belady = try TraceReplay.runBatched(t, sequences: sequences, policy: BeladyPolicy(), cachePerLayer: capacity)
            for choice in PolicyChoice.allCases {
                let result = try TraceReplay.runBatched(t, sequences: sequences, policy: choice.make(layerCount: 4, hotPerLayer: 1, shallowLayerCount: 2),
                                                        cachePerLayer: capacity, floorSlots: 2)
                #expect(result.requests == belady.requests)
                #expect(result.hits <= belady.hits, "\(choice) beat Belady with \(sequences) sequences (seed \(seed))")
            }
        }
    }

    /// The independent cross-check: `scripts/replay_trace.py` (standard library Python) must
    /// produce the same LRU and Belady hit counts on a synthetic Zipf-like trace.
    @Test func matchesThePythonReplay() throws {
        guard let (python, scripts) = pythonAndScripts() else { return }
        let tracePath = FileManager.default.temporaryDirectory.appendingPathComponent("expert-cache-crosscheck-\(getpid()).jsonl")
        defer { try? FileManager.default.removeItem(at: tracePath) }
        let generated = try run(python, [scripts.appendingPathComponent("synthetic_trace.py").path,
                                         "--layers", "5", "--experts", "16", "--top-k", "3", "--sequences", "3",
                                         "--prompt", "20", "--decode", "40", "--seed", "7"])
        try generated.write(to: tracePath)
        let t = try RoutingTrace(contentsOf: tracePath)
        for capacity in [3, 6, 10] {
            let output = try run(python, [scripts.appendingPathComponent("replay_trace.py").path, tracePath.path,
                                          "--cache-per-layer", "\(capacity)"])
            let reference = try JSONDecoder().decode([String: TraceReplay.ReferenceResult].self, from: output)
            let lru = try TraceReplay.run(t, policy: LRUPolicy(), cachePerLayer: capacity)
            let belady = try TraceReplay.run(t, policy: BeladyPolicy(), cachePerLayer: capacity)
            #expect(lru.hits == reference["lru"]!.hits && lru.requests == reference["lru"]!.requests)
            #expect(belady.hits == reference["belady"]!.hits && belady.requests == reference["belady"]!.requests)
        }
    }

    /// `scripts/trace_policy_bounds.py` replays the shared pool as `bench trace` does: its LRU
    /// and Belady hit what `TraceReplay` hits in one pool without floors, and none of its
    /// reference rankings beats Belady.
    @Test func policyBoundsReplayTheSharedPoolAsTheEngineDoes() throws {
        guard let (python, scripts) = pythonAndScripts() else { return }
        let tracePath = FileManager.default.temporaryDirectory.appendingPathComponent("policy-bounds-\(getpid()).jsonl")
        defer { try? FileManager.default.removeItem(at: tracePath) }
        try run(python, [scripts.appendingPathComponent("synthetic_trace.py").path,
                         "--layers", "4", "--experts", "12", "--top-k", "2", "--sequences", "2",
                         "--prompt", "8", "--decode", "30", "--seed", "3"]).write(to: tracePath)
        let t = try RoutingTrace(contentsOf: tracePath)
        for capacity in [3, 5] {
            let output = try run(python, [scripts.appendingPathComponent("trace_policy_bounds.py").path, tracePath.path,
                                          "--cache-per-layer", "\(capacity)"])
            let reference = try JSONDecoder().decode(PolicyBounds.self, from: output)
            let lru = try TraceReplay.run(t, policy: LRUPolicy(), cachePerLayer: capacity, pool: .global)
            let belady = try TraceReplay.run(t, policy: BeladyPolicy(), cachePerLayer: capacity, pool: .global)
            #expect(reference.requests == lru.requests)
            #expect(reference.hits["lru"] == lru.hits)
            #expect(reference.hits["belady"] == belady.hits)
            #expect(reference.hits.count == 5)
            for (name, hits) in reference.hits { #expect(hits <= belady.hits, "\(name) beat Belady at \(capacity) per layer") }
        }
    }

    /// `scripts/batch_stream_bound.py`'s pinned replay is the engine's: on recorded batch steps
    /// its Belady hits what `TraceReplay.runRecorded` hits over the decode window, and the
    /// streamed replay makes the same requests.
    @Test func streamBoundPinsAsTheRecordedReplayDoes() throws {
        guard let (python, scripts) = pythonAndScripts() else { return }
        // Three sequences decoding together, a step per position, as `bench batch --record-trace` writes them.
        var rng = SplitMix64(seed: 11)
        let lanes = (0..<3).map { _ in randomTrace(&rng, tokens: 24, layers: 4, experts: 12, topK: 3).tokens }
        var lines: [String] = []
        for position in 0..<24 {
            for (lane, tokens) in lanes.enumerated() {
                var token = tokens[position]
                token.seq = lane
                token.pos = position
                token.phase = "decode"
                token.step = position
                lines.append(String(decoding: try JSONEncoder().encode(token), as: UTF8.self))
            }
        }
        let tracePath = FileManager.default.temporaryDirectory.appendingPathComponent("stream-bound-\(getpid()).jsonl")
        defer { try? FileManager.default.removeItem(at: tracePath) }
        try (lines.joined(separator: "\n") + "\n").write(to: tracePath, atomically: true, encoding: .utf8)
        let t = try RoutingTrace(contentsOf: tracePath)
        for perLayer in [9, 11] {
            let capacity = perLayer * t.recordedLayers.count
            let output = try run(python, [scripts.appendingPathComponent("batch_stream_bound.py").path, tracePath.path,
                                          "--capacity", "\(capacity)", "--window", "2"])
            let report = try JSONDecoder().decode(StreamBoundReport.self, from: output)
            let belady = try TraceReplay.runRecorded(t, policy: BeladyPolicy(), cachePerLayer: perLayer).decodeWindow
            #expect(report.pinnedBelady.hits == belady.hits)
            #expect(report.pinnedBelady.hits + report.pinnedBelady.misses == belady.requests)
            #expect(report.streamedBelady.hits + report.streamedBelady.misses == belady.requests)
        }
    }

    /// `scripts/import_routing_trace.py` turns per-(problem, layer, token) records into a trace
    /// this module reads: a sequence per problem, tokens in order, null where a layer is missing.
    @Test func importedRecordingsReadAsTraces() throws {
        guard let (python, scripts) = pythonAndScripts() else { return }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("import-trace-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let records = [
            #"{"dataset": "d", "problem_id": 1, "layer": 0, "token_idx": 1, "experts": [2, 5], "gating_probs": [0.6, 0.4]}"#,
            #"{"dataset": "d", "problem_id": 1, "layer": 1, "token_idx": 1, "experts": [7, 0]}"#,
            #"{"dataset": "d", "problem_id": 1, "layer": 0, "token_idx": 0, "experts": [3, 4]}"#,
            #"{"dataset": "d", "problem_id": 1, "layer": 1, "token_idx": 0, "experts": [1, 6]}"#,
            #"{"dataset": "d", "problem_id": 0, "layer": 1, "token_pos": 0, "experts": [4, 2]}"#,
        ]
        let input = directory.appendingPathComponent("recording.jsonl")
        let output = directory.appendingPathComponent("trace.jsonl")
        try (records.joined(separator: "\n") + "\n").write(to: input, atomically: true, encoding: .utf8)
        _ = try run(python, [scripts.appendingPathComponent("import_routing_trace.py").path, output.path, input.path])
        let imported = try RoutingTrace(contentsOf: output)
        #expect(imported.tokens == [
            TraceToken(seq: 0, pos: 0, phase: "decode", layers: [nil, [4, 2]]),
            TraceToken(seq: 1, pos: 0, phase: "decode", layers: [[3, 4], [1, 6]]),
            TraceToken(seq: 1, pos: 1, phase: "decode", layers: [[2, 5], [7, 0]]),
        ])
    }

    /// python3 and the repository's `scripts` directory; nil (after saying so) where there is no python3.
    private func pythonAndScripts() -> (python: String, scripts: URL)? {
        guard let python = ["/usr/bin/python3", "/usr/local/bin/python3"].first(where: FileManager.default.isExecutableFile) else {
            print("python3 not found; skipping the check against the script")
            return nil
        }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return (python, root.appendingPathComponent("scripts"))
    }

    private func run(_ executable: String, _ arguments: [String]) throws -> Data {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        return data
    }
}

/// What `scripts/batch_stream_bound.py` prints (the fields the tests read).
private struct StreamBoundReport: Decodable {
    struct Row: Decodable {
        var hits: Int
        var misses: Int
    }
    var pinnedBelady: Row
    var streamedBelady: Row
    enum CodingKeys: String, CodingKey { case pinnedBelady = "pinned_belady", streamedBelady = "streamed_belady" }
}

/// What `scripts/trace_policy_bounds.py` prints per cache size (the fields the tests read).
private struct PolicyBounds: Decodable {
    var requests: Int
    var hits: [String: Int]
}

extension TraceReplay {
    /// What `scripts/replay_trace.py` prints per policy.
    struct ReferenceResult: Decodable {
        var hits: Int
        var requests: Int
    }
}

/// Records the sequence reports a replay gives its policy (a class: the replay copies the policy).
private final class SequenceLog: @unchecked Sendable {
    var events: [String] = []
}

private struct SequenceListeningLRU: CachePolicy {
    var lru = LRUPolicy()
    let log: SequenceLog
    var name: String { "listening" }
    mutating func didInsert(_ key: ExpertKey) { lru.didInsert(key) }
    mutating func didAccess(_ key: ExpertKey) { lru.didAccess(key) }
    mutating func didEvict(_ key: ExpertKey) { lru.didEvict(key) }
    func victim(among candidates: [ExpertKey]) -> ExpertKey { lru.victim(among: candidates) }
    mutating func sequence(_ sequence: Int, routedTo routed: [Int], layer: Int) { log.events.append("\(sequence):\(layer):\(routed)") }
    mutating func sequenceEnded(_ sequence: Int) { log.events.append("end \(sequence)") }
}

@Suite struct TraceReplaySequenceTests {
    /// Each token's distinct experts are reported per layer as its sequence's, and a sequence
    /// ends after its last token, also when sequences interleave.
    @Test func theReplayReportsSequencesAndTheirEnds() throws {
        let tokens = [
            TraceToken(seq: 4, pos: 0, phase: "prefill", layers: [nil, [1, 2, 1]]),
            TraceToken(seq: 5, pos: 0, phase: "prefill", layers: [nil, [3]]),
            TraceToken(seq: 4, pos: 1, phase: "decode", layers: [nil, [2]]),
            TraceToken(seq: 5, pos: 1, phase: "decode", layers: [nil, [1]]),
        ]
        let log = SequenceLog()
        let result = try TraceReplay.run(RoutingTrace(tokens: tokens), policy: SequenceListeningLRU(log: log), cachePerLayer: 2)
        #expect(result.requests == 5)
        #expect(log.events == ["4:1:[1, 2]", "5:1:[3]", "4:1:[2]", "end 4", "5:1:[1]", "end 5"])
    }

    /// On the synthetic trace, whose sequences each favour a few experts, knowing the sequences
    /// beats the long-run counts (the measured tables are in docs/expert-cache.md).
    @Test func knowingTheSequencesBeatsCountingOnATraceWithTopics() throws {
        var rng = SplitMix64(seed: 3)
        var tokens: [TraceToken] = []
        for seq in 0..<6 {
            // Each sequence routes mostly within its own four experts of 16, sometimes elsewhere.
            let favoured = (0..<4).map { (seq * 5 + $0 * 3) % 16 }
            for pos in 0..<120 {
                var chosen: [Int] = []
                while chosen.count < 2 {
                    let e = Double.random(in: 0..<1, using: &rng) < 0.8 ? favoured[Int.random(in: 0..<4, using: &rng)]
                                                                        : Int.random(in: 0..<16, using: &rng)
                    if !chosen.contains(e) { chosen.append(e) }
                }
                tokens.append(TraceToken(seq: seq, pos: pos, phase: "decode", layers: [nil, chosen]))
            }
        }
        let trace = RoutingTrace(tokens: tokens)
        let sequence = try TraceReplay.run(trace, policy: SequenceAwarePolicy(), cachePerLayer: 5)
        let lfu = try TraceReplay.run(trace, policy: LFUPolicy(), cachePerLayer: 5)
        let lru = try TraceReplay.run(trace, policy: LRUPolicy(), cachePerLayer: 5)
        #expect(sequence.hitRate > lfu.hitRate)
        #expect(sequence.hitRate > lru.hitRate)
    }
}
