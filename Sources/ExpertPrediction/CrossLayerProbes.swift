import Foundation
import ModelFormats
import TensorMath

/// Learned replacements for the cross-layer gate: for a (source, target) pair of MoE layers,
/// a linear map from the source layer's gate input to the target layer's router logits,
/// `logits[E] = W[E, H] · x[H] + b[E]`, fitted offline by least squares on recorded hidden
/// states (`scripts/train_predictor_probes.py`). The untrained cross-layer gate is the special
/// case W = the target's router, b = 0; on held-out code the fitted maps agree with the real
/// top-4 more often (docs/PREDICTOR.md).
///
/// File: safetensors with f32 tensors `probe.<target>.from.<source>.weight` `[E, H]` and
/// `probe.<target>.from.<source>.bias` `[E]`.
public struct CrossLayerProbes: @unchecked Sendable {
    /// One fitted map.
    public struct Probe {
        /// `[experts, hidden]`
        public let weight: WeightMatrix
        /// `[experts]`
        public let bias: [Float]
    }

    private let probes: [Pair: Probe]

    private struct Pair: Hashable { let source: Int, target: Int }

    /// Every pair in `probes`, keyed by (source, target).
    public init(_ probes: [(source: Int, target: Int, probe: Probe)]) {
        self.probes = Dictionary(probes.map { (Pair(source: $0.source, target: $0.target), $0.probe) }) { first, _ in first }
    }

    /// The map from `source`'s gate input to `target`'s logits, if one was fitted.
    public func probe(from source: Int, to target: Int) -> Probe? { probes[Pair(source: source, target: target)] }

    /// How many maps the file held.
    public var count: Int { probes.count }

    /// Reads `url`, checking that every map is `[experts, hidden]` f32 with an `[experts]` bias.
    public static func load(_ url: URL, experts: Int, hidden: Int) throws -> CrossLayerProbes {
        let file = try SafetensorsFile(path: url.path)
        var loaded: [(Int, Int, Probe)] = []
        for (name, entry) in file.entries where name.hasPrefix("probe.") && name.hasSuffix(".weight") {
            let parts = name.split(separator: ".")
            guard parts.count == 5, parts[2] == "from", let target = Int(parts[1]), let source = Int(parts[3]) else {
                throw ModelFormatError("\(url.path): tensor '\(name)' is not named probe.<target>.from.<source>.weight")
            }
            let biasName = "probe.\(target).from.\(source).bias"
            guard let biasEntry = file.entries[biasName] else { throw ModelFormatError("\(url.path): '\(name)' has no '\(biasName)'") }
            guard entry.dtype == .f32, entry.shape == [experts, hidden], biasEntry.dtype == .f32, biasEntry.shape == [experts] else {
                throw ModelFormatError("\(url.path): '\(name)' must be f32 [\(experts), \(hidden)] with an f32 [\(experts)] bias; got \(entry.dtype.rawValue) \(entry.shape) and \(biasEntry.dtype.rawValue) \(biasEntry.shape)")
            }
            let weights = Array(file.bytes(of: entry).bindMemory(to: Float.self))
            let bias = Array(file.bytes(of: biasEntry).bindMemory(to: Float.self))
            loaded.append((source, target, Probe(weight: WeightMatrix(rows: experts, cols: hidden, values: weights), bias: bias)))
        }
        guard !loaded.isEmpty else { throw ModelFormatError("\(url.path): no probe.<target>.from.<source>.weight tensors") }
        return CrossLayerProbes(loaded.map { (source: $0.0, target: $0.1, probe: $0.2) })
    }
}
