import Foundation
import ModelFormats
import TensorMath

/// A small linear stand-in for every routed expert's output, so that the shadow of the next
/// layer (`ShadowRouting`) can run as soon as a layer routes instead of after its resident
/// experts, and can fill in the experts still loading.
///
/// For expert `e` of MoE layer `l`, with `x` its input (the layer's normalised gate input) and
/// `y = E_e(x)` its output before the routing weight:
///
///     y ≈ bias[e] + Σ_j (input[e, j] · x) · output[e, j]          (j < rank)
///
/// fitted offline by ridge regression and reduced to `rank` (`scripts/fit_expert_surrogates.py`).
/// On the trained demo's held-out text (`scripts/shadow_routing_probe.py --surrogates`) a shadow
/// run when the layer routes, on rank-8 surrogates of every chosen expert, agrees with the next
/// layer's top-4 at 0.939, against 0.942 for the shadow after the residents and 0.873 for one on
/// h_mid alone. Rank 8 at hidden 256 is 17 KB an expert in RAM (f32; bf16 on disk), about 2% of
/// the widened demo's.
///
/// File: f32 or bf16 `surrogate.<l>.in` `[E, rank, H]`, `surrogate.<l>.out` `[E, rank, H]` and
/// `surrogate.<l>.bias` `[E, H]` per MoE layer `l` (held as f32 in RAM); a model directory's own
/// is `expert-surrogates.safetensors` (`fileName`).
public final class ExpertSurrogates: @unchecked Sendable {
    /// A model directory's own surrogates.
    public static let fileName = ExpertStore.expertSurrogatesFile

    public let rank: Int
    private let hidden: Int
    private let experts: Int
    /// Per MoE layer: `in` and `out` `[E, rank, H]` and `bias` `[E, H]`, one buffer each.
    private let layers: [Int: (input: AlignedBuffer<Float>, output: AlignedBuffer<Float>, bias: AlignedBuffer<Float>)]

    /// Bytes held in RAM, as f32 (counted with the dense weights in the memory plan).
    public let byteCount: Int

    /// Loads and checks `url` against `config`: every MoE layer has its three tensors, f32 or bf16,
    /// of the model's expert count and hidden size, one rank throughout; nothing else is in the file.
    public static func load(_ url: URL, config: ModelConfig) throws -> ExpertSurrogates {
        let file = try SafetensorsFile(path: url.path)
        let hidden = config.hiddenSize, experts = config.expertCount
        var rank: Int?
        var layers: [Int: (AlignedBuffer<Float>, AlignedBuffer<Float>, AlignedBuffer<Float>)] = [:]
        var bytes = 0
        func tensor(_ name: String, shape: (Int) -> [Int]) throws -> AlignedBuffer<Float> {
            guard let entry = file.entries[name] else { throw ModelFormatError("\(url.path): no tensor '\(name)'") }
            if rank == nil, entry.shape.count == 3 { rank = entry.shape[1] }
            let expected = shape(rank ?? 0)
            guard entry.dtype == .f32 || entry.dtype == .bf16, entry.shape == expected, (rank ?? 0) > 0 else {
                throw ModelFormatError("\(url.path): '\(name)' must be f32 or bf16 \(expected) (experts, rank, hidden \(hidden)); got \(entry.dtype.rawValue) \(entry.shape)")
            }
            let count = entry.elementCount
            let buffer = AlignedBuffer<Float>(count: count)
            let raw = file.bytes(of: entry)
            if entry.dtype == .bf16 {
                // Unaligned in the file: copied out, then widened.
                var bits = [UInt16](repeating: 0, count: count)
                bits.withUnsafeMutableBytes { $0.copyMemory(from: raw) }
                bits.withUnsafeBufferPointer { FloatConversion.convertBF16($0.baseAddress!, to: buffer.pointer, count: count) }
            } else {
                UnsafeMutableRawPointer(buffer.pointer).copyMemory(from: raw.baseAddress!, byteCount: count * 4)
            }
            bytes += count * MemoryLayout<Float>.stride
            return buffer
        }
        for layer in config.moeLayers {
            let input = try tensor("surrogate.\(layer).in") { [experts, $0, hidden] }
            let output = try tensor("surrogate.\(layer).out") { [experts, $0, hidden] }
            let bias = try tensor("surrogate.\(layer).bias") { _ in [experts, hidden] }
            layers[layer] = (input, output, bias)
        }
        let known = Set(config.moeLayers.flatMap { ["surrogate.\($0).in", "surrogate.\($0).out", "surrogate.\($0).bias"] })
        if let stray = file.entries.keys.sorted().first(where: { !known.contains($0) }) {
            throw ModelFormatError("\(url.path): tensor '\(stray)' is not a surrogate of one of this model's MoE layers (\(config.moeLayers.count) of them)")
        }
        return ExpertSurrogates(rank: rank ?? 0, hidden: hidden, experts: experts, layers: layers, byteCount: bytes)
    }

    private init(rank: Int, hidden: Int, experts: Int,
                 layers: [Int: (input: AlignedBuffer<Float>, output: AlignedBuffer<Float>, bias: AlignedBuffer<Float>)], byteCount: Int) {
        self.rank = rank
        self.hidden = hidden
        self.experts = experts
        self.layers = layers
        self.byteCount = byteCount
    }

    /// Whether `layer` has surrogates.
    public func covers(layer: Int) -> Bool { layers[layer] != nil }

    /// `into[hidden] += weight · surrogate_expert(x)` for expert `expert` of `layer`, `x` `[hidden]`.
    public func accumulate(layer: Int, expert: Int, input x: UnsafePointer<Float>, weight: Float, into y: UnsafeMutablePointer<Float>) {
        guard let tensors = layers[layer], expert >= 0, expert < experts else { return }
        let input = tensors.input.pointer + expert * rank * hidden
        let output = tensors.output.pointer + expert * rank * hidden
        Ops.addScaled(y, tensors.bias.pointer + expert * hidden, alpha: weight, count: hidden)
        // `[rank]` projections `input[e] · x`: SIMD dot products (a scalar sum does not vectorise
        // without reassociation; 16K multiply-adds an expert at OLMoE's hidden 2048, rank 8).
        withUnsafeTemporaryAllocation(of: Float.self, capacity: rank) { projections in
            let p = projections.baseAddress!
            AttentionKernels.scores(query: x, keys: input, keyStride: hidden, count: rank, dim: hidden, scale: 1, into: p)
            for j in 0..<rank {
                Ops.addScaled(y, output + j * hidden, alpha: weight * p[j], count: hidden)
            }
        }
    }
}
