import Foundation
import ModelFormats
import TensorMath

/// Learned replacements for the cross-layer gate: for a (source, target) pair of MoE layers, a
/// linear map from the source layer's gate input, `scores[E] = W[E, H] · x[H] + b[E]`, fitted
/// offline on recorded hidden states (`scripts/train_predictor_probes.py`). Two kinds:
///
/// - **selection** (`select.<target>.from.<source>.*`): logistic regression; `sigmoid(scores[e])`
///   is the probability that expert e is among the target layer's top-k for this token. It is
///   calibrated for the decision prefetch makes — read an expert only if it is likely enough to
///   be used — where a router's softmax probability is not: the 4th of a token's top 4 often has
///   a router probability under 0.1 (docs/PREDICTOR.md measures both).
/// - **router logits** (`probe.<target>.from.<source>.*`): least squares to the target router's
///   logits, scored like the router itself (softmax). The untrained cross-layer gate is the case
///   W = the target's router, b = 0.
///
/// File: safetensors with f32 `weight` `[E, H]` and `bias` `[E]` per pair, all of one kind.
public struct CrossLayerProbes: @unchecked Sendable {
    /// What a map's scores are.
    public enum Output: String, Sendable {
        /// Logits of "this expert is in the target's top-k", one independent sigmoid each.
        case selection = "select"
        /// The target router's logits (softmax over experts).
        case routerLogits = "probe"
    }

    /// One fitted map.
    public struct Probe {
        /// `[experts, hidden]`
        public let weight: WeightMatrix
        /// `[experts]`
        public let bias: [Float]
        /// How to read its scores.
        public let output: Output

        public init(weight: WeightMatrix, bias: [Float], output: Output = .routerLogits) {
            self.weight = weight
            self.bias = bias
            self.output = output
        }
    }

    private let probes: [Pair: Probe]

    private struct Pair: Hashable { let source: Int, target: Int }

    /// Every pair in `probes`, keyed by (source, target).
    public init(_ probes: [(source: Int, target: Int, probe: Probe)]) {
        self.probes = Dictionary(probes.map { (Pair(source: $0.source, target: $0.target), $0.probe) }) { first, _ in first }
    }

    /// The map from `source`'s gate input to `target`'s scores, if one was fitted.
    public func probe(from source: Int, to target: Int) -> Probe? { probes[Pair(source: source, target: target)] }

    /// How many maps the file held.
    public var count: Int { probes.count }

    /// The kind of every map (nil when empty).
    public var output: Output? { probes.values.first?.output }

    /// Reads `url`, checking that every map is `[experts, hidden]` f32 with an `[experts]` bias
    /// and that all are of one kind.
    public static func load(_ url: URL, experts: Int, hidden: Int) throws -> CrossLayerProbes {
        let file = try SafetensorsFile(path: url.path)
        var loaded: [(Int, Int, Probe)] = []
        for (name, entry) in file.entries.sorted(by: { $0.key < $1.key }) where name.hasSuffix(".weight") {
            let parts = name.split(separator: ".")
            guard parts.count == 5, let output = Output(rawValue: String(parts[0])), parts[2] == "from",
                  let target = Int(parts[1]), let source = Int(parts[3]) else {
                throw ModelFormatError("\(url.path): tensor '\(name)' is not named select.<target>.from.<source>.weight or probe.<target>.from.<source>.weight")
            }
            if let first = loaded.first?.2.output, first != output {
                throw ModelFormatError("\(url.path): mixes \(first.rawValue).* and \(output.rawValue).* maps; a file holds one kind")
            }
            let biasName = "\(output.rawValue).\(target).from.\(source).bias"
            guard let biasEntry = file.entries[biasName] else { throw ModelFormatError("\(url.path): '\(name)' has no '\(biasName)'") }
            guard entry.dtype == .f32, entry.shape == [experts, hidden], biasEntry.dtype == .f32, biasEntry.shape == [experts] else {
                throw ModelFormatError("\(url.path): '\(name)' must be f32 [\(experts), \(hidden)] with an f32 [\(experts)] bias; got \(entry.dtype.rawValue) \(entry.shape) and \(biasEntry.dtype.rawValue) \(biasEntry.shape)")
            }
            let weights = Array(file.bytes(of: entry).bindMemory(to: Float.self))
            let bias = Array(file.bytes(of: biasEntry).bindMemory(to: Float.self))
            loaded.append((source, target, Probe(weight: WeightMatrix(rows: experts, cols: hidden, values: weights), bias: bias, output: output)))
        }
        guard !loaded.isEmpty else { throw ModelFormatError("\(url.path): no select.<target>.from.<source>.weight or probe.<target>.from.<source>.weight tensors") }
        return CrossLayerProbes(loaded.map { (source: $0.0, target: $0.1, probe: $0.2) })
    }
}
