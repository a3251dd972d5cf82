import Foundation
import ModelFormats
import TensorMath

/// Learned replacements for the cross-layer gate: for a (source, target) pair of MoE layers, a
/// map from the source layer's gate input, `scores[E] = W[E, H] · x[H] + b[E]` or, with a hidden
/// layer, `W[E, U] · silu(W1[U, H] · x + b1[U]) + b[E]`, fitted offline on recorded hidden
/// states (`scripts/train_predictor_probes.py`). Two kinds:
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
/// File: safetensors with f32 `weight` `[E, H]` and `bias` `[E]` per pair (with a hidden layer:
/// also `hidden.weight` `[U, H]` and `hidden.bias` `[U]`, and `weight` `[E, U]`), all of one kind.
public struct CrossLayerProbes: @unchecked Sendable {
    /// What a map's scores are.
    public enum Output: String, Sendable {
        /// Logits of "this expert is in the target's top-k", one independent sigmoid each.
        case selection = "select"
        /// The target router's logits (softmax over experts).
        case routerLogits = "probe"
    }

    /// One fitted map: `scores = weight · x + bias`, or with a hidden layer
    /// `scores = weight · silu(hiddenWeight · x + hiddenBias) + bias`.
    public struct Probe {
        /// `[experts, hidden]`, or `[experts, units]` after a hidden layer.
        public let weight: WeightMatrix
        /// `[experts]`
        public let bias: [Float]
        /// How to read its scores.
        public let output: Output
        /// An optional hidden layer: `[units, hidden]` and `[units]`.
        public let hiddenLayer: (weight: WeightMatrix, bias: [Float])?

        public init(weight: WeightMatrix, bias: [Float], output: Output = .routerLogits,
                    hiddenLayer: (weight: WeightMatrix, bias: [Float])? = nil) {
            self.weight = weight
            self.bias = bias
            self.output = output
            self.hiddenLayer = hiddenLayer
        }

        /// Units of the hidden layer (0 without one): `apply` needs `rows × hiddenUnits` floats
        /// of scratch.
        public var hiddenUnits: Int { hiddenLayer?.weight.rows ?? 0 }

        /// The scores `[rows, experts]` of `rows` inputs `[rows, hidden]`, into `scores`.
        /// `scratch` (at least `rows × hiddenUnits` floats) holds the hidden activations; without
        /// it they are allocated.
        public func apply(_ input: UnsafePointer<Float>, rowCount: Int, into scores: UnsafeMutablePointer<Float>,
                          scratch: UnsafeMutablePointer<Float>? = nil) {
            if let hiddenLayer {
                let units = hiddenLayer.weight.rows
                let owned = scratch == nil ? AlignedBuffer<Float>(count: rowCount * units) : nil
                let activations = scratch ?? owned!.pointer // [rows, units]
                hiddenLayer.weight.apply(input, rowCount: rowCount, into: activations)
                for row in 0..<rowCount {
                    for u in 0..<units {
                        let v = activations[row * units + u] + hiddenLayer.bias[u]
                        activations[row * units + u] = v * Ops.sigmoid(v) // silu
                    }
                }
                weight.apply(activations, rowCount: rowCount, into: scores)
                withExtendedLifetime(owned) {}
            } else {
                weight.apply(input, rowCount: rowCount, into: scores)
            }
            let experts = weight.rows
            for row in 0..<rowCount { for e in 0..<experts { scores[row * experts + e] += bias[e] } }
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
        for (name, entry) in file.entries.sorted(by: { $0.key < $1.key }) where name.hasSuffix(".weight") && !name.hasSuffix(".hidden.weight") {
            let parts = name.split(separator: ".")
            guard parts.count == 5, let output = Output(rawValue: String(parts[0])), parts[2] == "from",
                  let target = Int(parts[1]), let source = Int(parts[3]) else {
                throw ModelFormatError("\(url.path): tensor '\(name)' is not named select.<target>.from.<source>.weight or probe.<target>.from.<source>.weight")
            }
            if let first = loaded.first?.2.output, first != output {
                throw ModelFormatError("\(url.path): mixes \(first.rawValue).* and \(output.rawValue).* maps; a file holds one kind")
            }
            let prefix = "\(output.rawValue).\(target).from.\(source)"
            // A hidden layer, if the map has one, sets the width the output layer reads.
            var hiddenLayer: (weight: WeightMatrix, bias: [Float])?
            if let hiddenEntry = file.entries["\(prefix).hidden.weight"] {
                let units = hiddenEntry.shape.first ?? 0
                hiddenLayer = try layer(file, url: url, name: "\(prefix).hidden", rows: units, cols: hidden, entry: hiddenEntry)
            }
            let (weight, bias) = try layer(file, url: url, name: prefix, rows: experts, cols: hiddenLayer?.weight.rows ?? hidden, entry: entry)
            loaded.append((source, target, Probe(weight: weight, bias: bias, output: output, hiddenLayer: hiddenLayer)))
        }
        guard !loaded.isEmpty else { throw ModelFormatError("\(url.path): no select.<target>.from.<source>.weight or probe.<target>.from.<source>.weight tensors") }
        return CrossLayerProbes(loaded.map { (source: $0.0, target: $0.1, probe: $0.2) })
    }

    /// `<name>.weight` (f32 `[rows, cols]`, `entry`) and `<name>.bias` (f32 `[rows]`).
    private static func layer(_ file: SafetensorsFile, url: URL, name: String, rows: Int, cols: Int,
                              entry: SafetensorsEntry) throws -> (weight: WeightMatrix, bias: [Float]) {
        let biasName = "\(name).bias"
        guard let biasEntry = file.entries[biasName] else { throw ModelFormatError("\(url.path): '\(name).weight' has no '\(biasName)'") }
        guard rows > 0, entry.dtype == .f32, entry.shape == [rows, cols], biasEntry.dtype == .f32, biasEntry.shape == [rows] else {
            throw ModelFormatError("\(url.path): '\(name).weight' must be f32 [\(rows), \(cols)] with an f32 [\(rows)] bias; got \(entry.dtype.rawValue) \(entry.shape) and \(biasEntry.dtype.rawValue) \(biasEntry.shape)")
        }
        let weights = Array(file.bytes(of: entry).bindMemory(to: Float.self))
        let bias = Array(file.bytes(of: biasEntry).bindMemory(to: Float.self))
        return (WeightMatrix(rows: rows, cols: cols, values: weights), bias)
    }
}
