import ModelFormats
import TensorMath

/// A gated MLP: `down( act(gate·x) ⊙ up·x )` with the architecture's activation (SwiGLU so
/// far). Used for dense layers, shared experts, and (through `apply`) routed experts.
struct DenseMLP {
    let weights: ExpertWeights
    let activation: Activation

    init(prefix: String, hidden: Int, width: Int, activation: Activation, source: WeightSource) throws {
        weights = ExpertWeights(
            gate: try source.matrix("\(prefix).gate_proj.weight", rows: width, cols: hidden),
            up: try source.matrix("\(prefix).up_proj.weight", rows: width, cols: hidden),
            down: try source.matrix("\(prefix).down_proj.weight", rows: hidden, cols: width))
        self.activation = activation
    }

    /// `output[n, hidden] = mlp(x[n, hidden])`, with `scratch`'s gate and up buffers.
    func forward(_ x: UnsafePointer<Float>, rowCount: Int, scratch: ForwardWorkspace.Worker, output: UnsafeMutablePointer<Float>) {
        Self.apply(weights, activation: activation, x, rowCount: rowCount, scratch: scratch, output: output)
    }

    /// Runs the MLP `expert` over `rowCount` rows; `scratch.gate` and `scratch.up` hold
    /// `[rowCount, width]` each.
    static func apply(_ expert: ExpertWeights, activation: Activation, _ x: UnsafePointer<Float>, rowCount: Int,
                      scratch: ForwardWorkspace.Worker, output: UnsafeMutablePointer<Float>) {
        let width = expert.gate.rows
        // An expert wider than its config says (a provider's own weights) gets buffers of its
        // own rather than overrunning the workspace (this module builds with -Ounchecked).
        let fits = scratch.gate.count >= rowCount * width
        let ownGate = fits ? nil : AlignedBuffer<Float>(count: rowCount * width)
        let ownUp = fits ? nil : AlignedBuffer<Float>(count: rowCount * width)
        let gate = ownGate?.pointer ?? scratch.gate.pointer // [n, width]
        let up = ownUp?.pointer ?? scratch.up.pointer       // [n, width]
        expert.gate.apply(x, rowCount: rowCount, into: gate)
        expert.up.apply(x, rowCount: rowCount, into: up)
        switch activation {
        case .silu: Ops.siluMultiply(gate, up, count: rowCount * width)
        }
        expert.down.apply(gate, rowCount: rowCount, into: output)
        withExtendedLifetime((ownGate, ownUp)) {}
    }
}
