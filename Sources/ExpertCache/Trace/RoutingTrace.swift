import Foundation

/// One token's routing as recorded in a trace line:
/// `{"seq": s, "pos": p, "phase": "prefill"|"decode"|"unknown", "layers": [[e1, ...], null, ...]}`,
/// and, in traces a batching engine recorded, `"step": n`, the engine step the token ran in
/// (the rows of one step are consecutive lines).
public struct TraceToken: Codable, Sendable, Equatable {
    /// The sequence (request) the token belongs to.
    public var seq: Int
    /// Its position in the sequence.
    public var pos: Int
    /// `prefill`, `decode` or `unknown`.
    public var phase: String
    /// Per model layer, the experts the token was routed to (highest weight first), or nil for
    /// a layer that was not recorded (a dense layer, or a layer the recorder skipped).
    public var layers: [[Int]?]
    /// The engine step the token ran in, when the recorder knew it (nil in older traces).
    public var step: Int?

    /// A token of sequence `seq` at position `pos`.
    public init(seq: Int, pos: Int, phase: String, layers: [[Int]?], step: Int? = nil) {
        self.seq = seq
        self.pos = pos
        self.phase = phase
        self.layers = layers
        self.step = step
    }

    private enum CodingKeys: String, CodingKey { case seq, pos, phase, layers, step }

    /// Lenient where the format allows it: a missing `seq`/`pos` reads as 0, a missing phase
    /// as `unknown`; unknown fields are ignored.
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        seq = try container.decodeIfPresent(Int.self, forKey: .seq) ?? 0
        pos = try container.decodeIfPresent(Int.self, forKey: .pos) ?? 0
        phase = try container.decodeIfPresent(String.self, forKey: .phase) ?? "unknown"
        layers = try container.decode([[Int]?].self, forKey: .layers)
        step = try container.decodeIfPresent(Int.self, forKey: .step)
    }
}

/// A routing trace: tokens in the order they ran.
public struct RoutingTrace: Sendable, Equatable {
    /// The tokens, in execution order.
    public var tokens: [TraceToken]

    /// Wraps `tokens`.
    public init(tokens: [TraceToken]) { self.tokens = tokens }

    /// Parses JSON Lines text; blank lines are skipped and errors name the line.
    public init(jsonLines data: Data, source: String = "trace") throws {
        let decoder = JSONDecoder()
        var tokens: [TraceToken] = []
        var lineNumber = 0
        for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            do {
                tokens.append(try decoder.decode(TraceToken.self, from: Data(line)))
            } catch {
                throw TraceError("\(source):\(lineNumber): not a trace record (\(error))")
            }
        }
        self.tokens = tokens
    }

    /// Reads a `.jsonl` trace file.
    public init(contentsOf url: URL) throws {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw TraceError("\(url.path): cannot read the trace (\(error.localizedDescription))")
        }
        try self.init(jsonLines: data, source: url.path)
    }

    /// The number of layer slots (the longest `layers` array).
    public var layerCount: Int { tokens.map(\.layers.count).max() ?? 0 }

    /// Layers that have at least one recorded token.
    public var recordedLayers: [Int] {
        (0..<layerCount).filter { layer in tokens.contains { layer < $0.layers.count && $0.layers[layer] != nil } }
    }

    /// The most distinct experts one token uses in one layer (the model's top-k).
    public var maxExpertsPerToken: Int {
        tokens.flatMap { $0.layers.compactMap { $0.map { Set($0).count } } }.max() ?? 0
    }
}

/// A trace that cannot be read or replayed.
public struct TraceError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
