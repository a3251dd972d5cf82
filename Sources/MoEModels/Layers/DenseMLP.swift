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
        Self.run(weights, activation: activation, x, rowCount: rowCount, scratch: scratch, output: output, beforeDown: {})
    }

    /// Runs the MLP `expert` over `rowCount` rows; `scratch.gate` and `scratch.up` hold
    /// `[rowCount, width]` each. An expert still arriving (`rest` set: a split read) has its
    /// gate and up products computed first, and the down product once `rest` is in; its error
    /// (the read or checksum failed) is thrown and the output left unwritten.
    static func apply(_ expert: ExpertWeights, activation: Activation, _ x: UnsafePointer<Float>, rowCount: Int,
                      scratch: ForwardWorkspace.Worker, output: UnsafeMutablePointer<Float>) throws {
        try run(expert, activation: activation, x, rowCount: rowCount, scratch: scratch, output: output,
                beforeDown: { try expert.rest?.wait() })
    }

    private static func run(_ expert: ExpertWeights, activation: Activation, _ x: UnsafePointer<Float>, rowCount: Int,
                            scratch: ForwardWorkspace.Worker, output: UnsafeMutablePointer<Float>,
                            beforeDown: () throws -> Void) rethrows {
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
        // The biases follow the down matrix in a blob, so they too wait (split reads never
        // hand out experts with biases; this keeps the order right regardless).
        try beforeDown()
        if let biases = expert.biases {
            for row in 0..<rowCount {
                addBias(gate + row * width, biases.gate, width)
                addBias(up + row * width, biases.up, width)
            }
        }
        switch activation {
        case .silu: Ops.siluMultiply(gate, up, count: rowCount * width)
        case .clampedSwiGLU(let alpha, let limit):
            Ops.clampedSwiGLU(gate, up, count: rowCount * width, alpha: alpha, limit: limit)
        }
        expert.down.apply(gate, rowCount: rowCount, into: output)
        if let biases = expert.biases {
            let hidden = expert.down.rows
            for row in 0..<rowCount { addBias(output + row * hidden, biases.down, hidden) }
        }
        withExtendedLifetime((ownGate, ownUp)) {}
    }

    @inline(__always)
    private static func addBias(_ row: UnsafeMutablePointer<Float>, _ bias: UnsafePointer<Float>, _ count: Int) {
        for i in 0..<count { row[i] += bias[i] }
    }
}
