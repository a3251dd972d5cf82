import ArgumentParser
import ExpertCache
import Foundation

/// `moe-serve bench trace TRACE.jsonl --cache-per-layer C`: replays a routing trace through
/// every eviction policy and Belady's optimum and prints the hit rates.
struct TraceBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace", abstract: "Replay a routing trace through every cache policy and Belady's optimum.")

    @Argument(help: "A routing trace, one JSON object per token (see `generate --record-trace`).") var trace: String
    @Option(name: .customLong("cache-per-layer"), help: "Experts each layer's cache holds.") var cachePerLayer: Int?
    @Option(name: .customLong("cache-bytes"), help: "Total cache size (e.g. 2GiB), split evenly over the recorded layers; needs --expert-bytes.") var cacheBytes: String?
    @Option(name: .customLong("expert-bytes"), help: "Bytes of one expert, with --cache-bytes.") var expertBytes: String?
    @Option(name: .customLong("floor"), help: "Experts per layer protected in the shared pool (default: the trace's top-k).") var floor: Int?
    @Option(name: .customLong("shallow-layers"), help: "Layers Fate favours (default: the first quarter of the recorded layers).") var shallowLayers: Int?

    struct Output: Encodable {
        var tokens: Int
        var cachePerLayer: Int
        var layers: Int
        var topK: Int
        var policies: [String: TraceReplay.Result]

        enum CodingKeys: String, CodingKey {
            case tokens, cachePerLayer = "cache_per_layer", layers, topK = "top_k", policies
        }
    }

    func run() throws {
        try reportingErrors {
            let routing = try RoutingTrace(contentsOf: URL(fileURLWithPath: trace))
            guard !routing.tokens.isEmpty else { throw CommandError("\(trace): the trace has no tokens") }
            let recorded = routing.recordedLayers
            guard !recorded.isEmpty else { throw CommandError("\(trace): no layer of the trace was recorded") }
            let slots = try slotsPerLayer(recordedLayers: recorded.count)
            let topK = routing.maxExpertsPerToken
            let floorSlots = floor ?? topK
            // Fate's tier counts recorded (MoE) layers, but compares model layer indices.
            let shallowCount = shallowLayers ?? max(1, recorded.count / 4)
            let shallowBoundary = shallowCount < recorded.count ? recorded[shallowCount] : Int.max

            var runs: [(String, any CachePolicy, TraceReplay.Pool)] = [
                ("lru", LRUPolicy(), .perLayer),
                ("lfu", LFUPolicy(), .perLayer),
                ("lrfu", LRFUPolicy(), .perLayer),
                ("hotset", HotSetPolicy(hotPerLayer: slots / 2), .perLayer),
                ("belady", BeladyPolicy(), .perLayer),
            ]
            if recorded.count > 1 {
                runs += [
                    ("lru_global", LRUPolicy(), .global),
                    ("fate", LayerAwarePolicy(shallowLayerCount: shallowBoundary), .global),
                    ("belady_global", BeladyPolicy(), .global),  // no floors: the unconstrained optimum bounds every floored policy
                ]
            }
            var results: [String: TraceReplay.Result] = [:]
            for (name, policy, pool) in runs {
                let floors = name == "belady_global" ? 0 : floorSlots
                results[name] = try TraceReplay.run(routing, policy: policy, cachePerLayer: slots, pool: pool, floorSlots: floors)
            }
            let output = Output(tokens: routing.tokens.count, cachePerLayer: slots, layers: recorded.count, topK: topK, policies: results)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            var data = try encoder.encode(output)
            data.append(0x0A)
            FileHandle.standardOutput.write(data)
            FileHandle.standardError.write(Data(table(output, order: runs.map(\.0)).utf8))
        }
    }

    private func slotsPerLayer(recordedLayers: Int) throws -> Int {
        switch (cachePerLayer, cacheBytes, expertBytes) {
        case (let c?, nil, nil):
            guard c > 0 else { throw CommandError("--cache-per-layer must be positive") }
            return c
        case (nil, let total?, let each?):
            let totalBytes = try parseByteSize(total, option: "--cache-bytes")
            let expert = try parseByteSize(each, option: "--expert-bytes")
            guard expert > 0 else { throw CommandError("--expert-bytes must be positive") }
            let slots = totalBytes / expert / recordedLayers
            guard slots > 0 else {
                throw CommandError("--cache-bytes \(totalBytes) holds \(totalBytes / expert) experts of \(expert) bytes, fewer than one per recorded layer (\(recordedLayers))")
            }
            return slots
        default:
            throw CommandError("give either --cache-per-layer C, or --cache-bytes B with --expert-bytes E")
        }
    }

    private func table(_ output: Output, order: [String]) -> String {
        let belady = output.policies["belady"]!.hitRate
        var lines = ["trace: \(output.tokens) tokens, \(output.layers) layers, top-\(output.topK), \(output.cachePerLayer) experts cached per layer",
                     "policy          pool        hit rate   vs belady (same pool)"]
        for name in order {
            guard let result = output.policies[name] else { continue }
            let optimum = result.pool == .global ? output.policies["belady_global"]!.hitRate : belady
            let gap = String(format: "%+.4f", result.hitRate - optimum)
            lines.append(name.padding(toLength: 16, withPad: " ", startingAt: 0)
                         + result.pool.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0)
                         + String(format: "%.4f     ", result.hitRate) + gap)
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
