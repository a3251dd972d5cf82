import ExpertCache
import Foundation

/// Replays a routing trace through every eviction policy and Belady's optimum and reports the
/// hit rates (`moe-serve bench trace TRACE.jsonl --cache-per-layer C`).
public struct TraceBenchmark: Sendable {
    /// How big the cache is: experts per layer, or bytes split evenly over the recorded layers.
    public enum CacheSize: Sendable {
        case perLayer(Int)
        case bytes(total: Int, expert: Int)
    }

    /// The routing trace (see `generate --record-trace`).
    public var trace: RoutingTrace
    /// The cache each policy gets.
    public var cacheSize: CacheSize
    /// Experts per layer protected in the shared pool (default: the trace's top-k).
    public var floor: Int?
    /// Layers Fate favours (default: the first quarter of the recorded layers).
    public var shallowLayers: Int?

    /// A replay of `trace` with a cache of `cacheSize`.
    public init(trace: RoutingTrace, cacheSize: CacheSize, floor: Int? = nil, shallowLayers: Int? = nil) {
        self.trace = trace
        self.cacheSize = cacheSize
        self.floor = floor
        self.shallowLayers = shallowLayers
    }

    /// The JSON `bench trace` prints.
    public struct Output: Encodable {
        public var tokens: Int
        public var cachePerLayer: Int
        public var layers: Int
        public var topK: Int
        /// Each policy's result by name (`lru`, `lfu`, `lrfu`, `hotset`, `learned`, `sequence`, `sequence_measured`,
        /// `belady`, and with more than one recorded layer the shared-pool `lru_global`, `lfu_global`,
        /// `lrfu_global`, `learned_global`, `sequence_global`, `sequence_measured_global`, `sequence_dueling_global`, `fate`, `belady_global`).
        public var policies: [String: TraceReplay.Result]
        /// The policies in the order they ran (the table's order).
        public var order: [String]
        /// Per policy, the share of the gap between LRU and Belady (same pool) it closes:
        /// (hit rate − LRU's) / (Belady's − LRU's); absent where Belady gains nothing over LRU.
        public var gapClosed: [String: Double]
        /// Per policy, the replay's wall time per expert request (bookkeeping and policy together):
        /// what a policy costs the cache lock per lookup, on this machine.
        public var replayNanosecondsPerRequest: [String: Double]

        enum CodingKeys: String, CodingKey {
            case tokens, cachePerLayer = "cache_per_layer", layers, topK = "top_k", policies, gapClosed = "gap_closed"
            case replayNanosecondsPerRequest = "replay_ns_per_request"
        }
    }

    /// Replays the trace through every policy; returns the JSON output and a table for people.
    public func run() throws -> (output: Output, table: String) {
            let routing = trace
            guard !routing.tokens.isEmpty else { throw ToolError("the trace has no tokens") }
            let recorded = routing.recordedLayers
            guard !recorded.isEmpty else { throw ToolError("no layer of the trace was recorded") }
            let slots = try slotsPerLayer(recordedLayers: recorded.count)
            let topK = routing.maxExpertsPerToken
            let floorSlots = floor ?? topK

            var runs: [(String, any CachePolicy, TraceReplay.Pool)] = [
                ("lru", LRUPolicy(), .perLayer),
                ("lfu", LFUPolicy(), .perLayer),
                ("lrfu", LRFUPolicy(), .perLayer),
                ("hotset", HotSetPolicy(hotPerLayer: slots / 2), .perLayer),
                ("learned", LearnedPolicy(), .perLayer),
                ("sequence", SequenceAwarePolicy(parameters: try Self.sequenceParameters()), .perLayer),
                ("sequence_measured", SequenceAwarePolicy(parameters: try Self.sequenceParameters(learnsRecency: true)), .perLayer),
                ("belady", BeladyPolicy(), .perLayer),
            ]
            if recorded.count > 1 {
                // The shared-pool policies `--sequences` and `--as-recorded` replay, Belady last
                // (no floors: the unconstrained optimum bounds every floored policy).
                runs += try sharedPoolPolicies().makers.map { name, make in (name, make(), .global) }
            }
            var results: [String: TraceReplay.Result] = [:]
            var nanoseconds: [String: Double] = [:]
            for (name, policy, pool) in runs {
                let floors = name == "belady_global" ? 0 : floorSlots
                let start = DispatchTime.now().uptimeNanoseconds
                let result = try TraceReplay.run(routing, policy: policy, cachePerLayer: slots, pool: pool, floorSlots: floors)
                nanoseconds[name] = Double(DispatchTime.now().uptimeNanoseconds - start) / Double(max(result.requests, 1))
                results[name] = result
            }
            var gapClosed: [String: Double] = [:]
            for (name, result) in results {
                let (lru, belady) = result.pool == .global ? (results["lru_global"]!, results["belady_global"]!) : (results["lru"]!, results["belady"]!)
                if belady.hitRate > lru.hitRate { gapClosed[name] = (result.hitRate - lru.hitRate) / (belady.hitRate - lru.hitRate) }
            }
            let output = Output(tokens: routing.tokens.count, cachePerLayer: slots, layers: recorded.count, topK: topK,
                                policies: results, order: runs.map(\.0), gapClosed: gapClosed,
                                replayNanosecondsPerRequest: nanoseconds)
            return (output, table(output, order: output.order))
    }

    /// The JSON `bench trace --sequences` prints.
    public struct BatchOutput: Encodable {
        public var cachePerLayer: Int
        public var layers: Int
        public var topK: Int
        /// Experts per layer each floored policy protects (Belady has none).
        public var floor: Int
        /// The policies in the order they ran.
        public var order: [String]
        public var rows: [BatchRow]

        enum CodingKeys: String, CodingKey { case cachePerLayer = "cache_per_layer", layers, topK = "top_k", floor, order, rows }
    }

    /// One batch size's replay through every shared-pool policy.
    public struct BatchRow: Encodable {
        public var sequences: Int
        public var steps: Int
        /// Distinct experts per layer a step requests (the same for every policy).
        public var unionPerLayer: Double
        public var policies: [String: TraceReplay.BatchResult]
        /// Per policy, its experts read per token with one sequence over those with this many:
        /// the most a batch can gain over one sequence where reads bound decode.
        public var readsRatioToOneSequence: [String: Double]

        enum CodingKeys: String, CodingKey {
            case sequences, steps, unionPerLayer = "union_per_layer", policies, readsRatioToOneSequence = "reads_ratio_to_one_sequence"
        }
    }

    /// Replays the trace as `sequences` sequences decoding together, for each count, through the
    /// shared-pool policies and Belady's optimum (the runtime's cache is one pool for all layers).
    /// One sequence is always replayed too: it is what the ratios compare against.
    public func runBatched(sequences counts: [Int]) throws -> (output: BatchOutput, table: String) {
        guard !counts.isEmpty, counts.allSatisfy({ $0 >= 1 }) else { throw ToolError("--sequences takes counts of at least 1, e.g. 1,8,32,64") }
        let (recorded, slots, topK, floorSlots, makers) = try sharedPoolPolicies()
        var rows: [BatchRow] = []
        var one: [String: Double] = [:]
        for count in ([1] + counts.filter { $0 != 1 }) {
            var results: [String: TraceReplay.BatchResult] = [:]
            for (name, make) in makers {
                results[name] = try TraceReplay.runBatched(trace, sequences: count, policy: make(), cachePerLayer: slots,
                                                           floorSlots: name == "belady_global" ? 0 : floorSlots)
            }
            if count == 1 { one = results.mapValues(\.missesPerToken) }
            var readsRatio: [String: Double] = [:]
            for (name, result) in results where result.missesPerToken > 0 { readsRatio[name] = (one[name] ?? 0) / result.missesPerToken }
            let first = results.values.first!
            if count == 1 && !counts.contains(1) { continue }
            rows.append(BatchRow(sequences: count, steps: first.steps, unionPerLayer: first.unionPerLayer, policies: results,
                                 readsRatioToOneSequence: readsRatio))
        }
        let output = BatchOutput(cachePerLayer: slots, layers: recorded.count, topK: topK, floor: floorSlots, order: makers.map(\.0), rows: rows)
        var lines = ["trace: \(trace.tokens.count) tokens in \(Set(trace.tokens.map(\.seq)).count) sequences, \(recorded.count) layers, top-\(topK), one pool of \(slots) experts per layer",
                     "sequences  steps  union/layer  policy                    hit rate  experts read/token  × one sequence (reads)"]
        for row in rows {
            for name in output.order {
                guard let result = row.policies[name] else { continue }
                lines.append(String(format: "%9d  %5d  %11.1f  ", row.sequences, row.steps, row.unionPerLayer)
                             + name.padding(toLength: 26, withPad: " ", startingAt: 0)
                             + String(format: "%.4f    %18.2f  %8.2f", result.hitRate, result.missesPerToken, row.readsRatioToOneSequence[name] ?? 0))
            }
        }
        return (output, lines.joined(separator: "\n") + "\n")
    }

    /// The JSON `bench trace --as-recorded` prints.
    public struct RecordedOutput: Encodable {
        public var tokens: Int
        public var steps: Int
        public var cachePerLayer: Int
        public var layers: Int
        public var topK: Int
        /// Experts per layer each floored policy protects (Belady has none).
        public var floor: Int
        /// The policies in the order they ran.
        public var order: [String]
        public var policies: [String: TraceReplay.RecordedResult]
        /// Per policy, the share of the LRU→Belady gap it closes over every step, and over the
        /// decode window (what `bench batch` counts; for a trace of sequences run one after
        /// another, only the last one's decode).
        public var gapClosed: [String: Double]
        public var gapClosedDecodeWindow: [String: Double]

        enum CodingKeys: String, CodingKey {
            case tokens, steps, cachePerLayer = "cache_per_layer", layers, topK = "top_k", floor, order, policies, gapClosed = "gap_closed"
            case gapClosedDecodeWindow = "gap_closed_decode_window"
        }
    }

    /// Replays the trace's recorded steps (a batching engine's, written by `bench batch
    /// --record-trace`) through the shared-pool policies and Belady's optimum, so that a live
    /// run's routing, prefill steps and batch included, can be replayed policy against policy.
    public func runRecorded() throws -> (output: RecordedOutput, table: String) {
        let (recorded, slots, topK, floorSlots, makers) = try sharedPoolPolicies()
        var results: [String: TraceReplay.RecordedResult] = [:]
        for (name, make) in makers {
            results[name] = try TraceReplay.runRecorded(trace, policy: make(), cachePerLayer: slots,
                                                        floorSlots: name == "belady_global" ? 0 : floorSlots)
        }
        func gaps(_ rate: (TraceReplay.RecordedResult) -> Double) -> [String: Double] {
            let lru = rate(results["lru_global"]!), belady = rate(results["belady_global"]!)
            guard belady > lru else { return [:] }
            return results.mapValues { (rate($0) - lru) / (belady - lru) }
        }
        let gapClosed = gaps { $0.all.hitRate }, gapClosedDecodeWindow = gaps { $0.decodeWindow.hitRate }
        let steps = try TraceReplay.recordedSteps(trace)
        let window = results.values.first!.decodeWindowStart
        let output = RecordedOutput(tokens: trace.tokens.count, steps: steps.count, cachePerLayer: slots, layers: recorded.count, topK: topK,
                                    floor: floorSlots, order: makers.map(\.0), policies: results, gapClosed: gapClosed,
                                    gapClosedDecodeWindow: gapClosedDecodeWindow)
        var lines = ["trace: \(trace.tokens.count) tokens in \(steps.count) recorded steps (\(Set(trace.tokens.map(\.seq)).count) sequences; decode window from step \(window)), \(recorded.count) layers, top-\(topK), one pool of \(slots) experts per layer",
                     "policy                    hit rate (all)  gap closed (all)  hit rate (decode window)  gap closed (window)"]
        func percent(_ value: Double?) -> String { value.map { String(format: "%4.0f%%", 100 * $0) } ?? "    -" }
        for name in output.order {
            guard let result = results[name] else { continue }
            lines.append(name.padding(toLength: 26, withPad: " ", startingAt: 0)
                         + String(format: "%.4f          ", result.all.hitRate) + percent(gapClosed[name])
                         + String(format: "             %.4f                    ", result.decodeWindow.hitRate) + percent(gapClosedDecodeWindow[name]))
        }
        return (output, lines.joined(separator: "\n") + "\n")
    }

    /// What the shared-pool replays (`run`'s global rows, `runBatched`, `runRecorded`) share: the recorded layers, the
    /// slots per layer, top-k, the floor, and each shared-pool policy with Belady last, by name.
    private func sharedPoolPolicies() throws -> (recorded: [Int], slots: Int, topK: Int, floor: Int,
                                                 makers: [(String, () -> any CachePolicy)]) {
        let recorded = trace.recordedLayers
        guard !trace.tokens.isEmpty, !recorded.isEmpty else { throw ToolError("the trace has no recorded tokens") }
        let slots = try slotsPerLayer(recordedLayers: recorded.count)
        let topK = trace.maxExpertsPerToken
        // Fate's tier counts recorded (MoE) layers, but compares model layer indices.
        let shallowCount = shallowLayers ?? max(1, recorded.count / 4)
        let shallowBoundary = shallowCount < recorded.count ? recorded[shallowCount] : Int.max
        let sequenceParameters = try Self.sequenceParameters()
        let measuredRecencyParameters = try Self.sequenceParameters(learnsRecency: true)
        let duelStride = try Self.duelSampleStride()
        let makers: [(String, () -> any CachePolicy)] = [
            ("lru_global", { LRUPolicy() }), ("lfu_global", { LFUPolicy() }), ("lrfu_global", { LRFUPolicy() }),
            ("learned_global", { LearnedPolicy() }), ("sequence_global", { SequenceAwarePolicy(parameters: sequenceParameters) }),
            ("sequence_measured_global", { SequenceAwarePolicy(parameters: measuredRecencyParameters) }),
            ("sequence_dueling_global", { DuelingPolicy(SequenceAwarePolicy(parameters: sequenceParameters),
                                                        SequenceAwarePolicy(parameters: measuredRecencyParameters),
                                                        sampleStride: duelStride, name: "sequence_dueling") }),
            ("fate", { LayerAwarePolicy(shallowLayerCount: shallowBoundary) }), ("belady_global", { BeladyPolicy() }),
        ]
        return (recorded, slots, topK, floor ?? topK, makers)
    }

    /// The sequence-aware policy's parameters: the defaults, or `MOE_SEQUENCE_PARAMETERS` =
    /// "priorWeight,recencyWeight,recencyHalfLife,longHalfLife" (in layer references) to sweep them.
    /// `learnsRecency: true` is the `sequence_measured` rows: the recency bonus measured on the
    /// stream (alone with `MOE_LEARNED_RECENCY=on` at run time, and one side of the default duel), replayed next to the fixed one.
    static func sequenceParameters(_ setting: String? = ProcessInfo.processInfo.environment["MOE_SEQUENCE_PARAMETERS"],
                                   learnsRecency: Bool = false) throws -> SequenceAwarePolicy.Parameters {
        var parameters = SequenceAwarePolicy.Parameters.fromEnvironment()
        parameters.learnsRecency = learnsRecency
        guard let text = setting, !text.isEmpty else { return parameters }
        let values = text.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard values.count == 4, values[0] > 0, values[1] >= 0, values[2] > 0, values[3] > 0 else {
            throw ToolError("MOE_SEQUENCE_PARAMETERS: expected priorWeight,recencyWeight,recencyHalfLife,longHalfLife (positive numbers; recency weight may be 0), got '\(text)'")
        }
        (parameters.priorWeight, parameters.recencyWeight, parameters.recencyHalfLife, parameters.longHalfLife) = (values[0], values[1], values[2], values[3])
        return parameters
    }

    /// One layer in how many the dueling policy's simulations sample: `MOE_DUEL_SAMPLE_STRIDE`
    /// (to measure what sampling costs), or the policy's default.
    static func duelSampleStride(_ setting: String? = ProcessInfo.processInfo.environment["MOE_DUEL_SAMPLE_STRIDE"]) throws -> Int {
        guard let text = setting, !text.isEmpty else { return DuelingPolicy<LRUPolicy, LRUPolicy>.defaultSampleStride }
        guard let stride = Int(text), stride > 0 else { throw ToolError("MOE_DUEL_SAMPLE_STRIDE: expected a positive whole number, got '\(text)'") }
        return stride
    }

    private func slotsPerLayer(recordedLayers: Int) throws -> Int {
        switch cacheSize {
        case .perLayer(let c):
            guard c > 0 else { throw ToolError("--cache-per-layer must be positive") }
            return c
        case .bytes(let totalBytes, let expert):
            guard expert > 0 else { throw ToolError("--expert-bytes must be positive") }
            let slots = totalBytes / expert / recordedLayers
            guard slots > 0 else {
                throw ToolError("--cache-bytes \(totalBytes) holds \(totalBytes / expert) experts of \(expert) bytes, fewer than one per recorded layer (\(recordedLayers))")
            }
            return slots
        }
    }

    private func table(_ output: Output, order: [String]) -> String {
        let belady = output.policies["belady"]!.hitRate
        var lines = ["trace: \(output.tokens) tokens, \(output.layers) layers, top-\(output.topK), \(output.cachePerLayer) experts cached per layer",
                     "policy                    pool        hit rate   vs belady (same pool)   LRU→Belady gap closed   ns/request"]
        for name in order {
            guard let result = output.policies[name] else { continue }
            let optimum = result.pool == .global ? output.policies["belady_global"]!.hitRate : belady
            let gap = String(format: "%+.4f", result.hitRate - optimum)
            lines.append(name.padding(toLength: 26, withPad: " ", startingAt: 0)
                         + result.pool.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0)
                         + String(format: "%.4f     ", result.hitRate) + gap
                         + (output.gapClosed[name].map { String(format: "                 %4.0f%%", 100 * $0) } ?? "                      ")
                         + (output.replayNanosecondsPerRequest[name].map { String(format: "                  %6.0f", $0) } ?? ""))
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
