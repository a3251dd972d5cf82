import ModelFormats
import TensorMath

/// A SwiGLU MLP: `down( silu(gate·x) ⊙ up·x )`. Used for dense layers, shared experts, and
/// (through `apply(expert:)`) routed experts.
struct DenseMLP {
    let weights: ExpertWeights

    init(prefix: String, hidden: Int, width: Int, source: WeightSource) throws {
        weights = ExpertWeights(
            gate: try source.matrix("\(prefix).gate_proj.weight", rows: width, cols: hidden),
            up: try source.matrix("\(prefix).up_proj.weight", rows: width, cols: hidden),
            down: try source.matrix("\(prefix).down_proj.weight", rows: hidden, cols: width))
    }

    /// `output[n, hidden] = mlp(x[n, hidden])`.
    func forward(_ x: UnsafePointer<Float>, rowCount: Int, output: UnsafeMutablePointer<Float>) {
        Self.apply(weights, x, rowCount: rowCount, output: output)
    }

    /// Runs the SwiGLU MLP `expert` over `rowCount` rows.
    static func apply(_ expert: ExpertWeights, _ x: UnsafePointer<Float>, rowCount: Int, output: UnsafeMutablePointer<Float>) {
        let width = expert.gate.rows
        let gate = AlignedBuffer<Float>(count: rowCount * width) // [n, width]
        let up = AlignedBuffer<Float>(count: rowCount * width)   // [n, width]
        expert.gate.apply(x, rowCount: rowCount, into: gate.pointer)
        expert.up.apply(x, rowCount: rowCount, into: up.pointer)
        Ops.siluMultiply(gate.pointer, up.pointer, count: rowCount * width)
        expert.down.apply(gate.pointer, rowCount: rowCount, into: output)
    }
}
