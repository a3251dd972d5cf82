import TensorMath

extension GGUFModel {
    /// The per-expert names a GGUF file serves its stacked expert tensors under when the
    /// architecture's own names are fused (gpt-oss): `model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight`
    /// (and `.bias`), expert `E`'s slices of `blk.L.ffn_{gate,up,down}_exps`.
    public static func expertNames(layer: Int, expert: Int) -> ExpertTensorNames {
        let prefix = "model.layers.\(layer).mlp.experts.\(expert)"
        return ExpertTensorNames(gate: "\(prefix).gate_proj.weight", up: "\(prefix).up_proj.weight", down: "\(prefix).down_proj.weight")
    }

    /// Expert `expert` of MoE layer `layer`: its slices of the stacked `ffn_{gate,up,down}_exps`
    /// tensors in their ggml types (read with `O_DIRECT`), and of the `ffn_*_exps.bias` tensors
    /// `[width or hidden, experts]` when the file has them (gpt-oss), widened to float32.
    public func expert(layer: Int, expert: Int) throws -> ExpertWeights {
        let description = config.architecture.definition
        let names = description.fusedExperts == nil ? description.expertTensorNames(layer, expert) : Self.expertNames(layer: layer, expert: expert)
        let hidden = config.hiddenSize, width = config.expertIntermediateSize
        let gate = try matrix(names.gate, rows: width, cols: hidden)
        let up = try matrix(names.up, rows: width, cols: hidden)
        let down = try matrix(names.down, rows: hidden, cols: width)
        guard tensors["blk.\(layer).ffn_gate_exps.bias"] != nil else {
            if description.fusedExperts != nil {
                throw ModelFormatError.tensor("blk.\(layer).ffn_gate_exps.bias", in: url.path, "missing (\(config.architecture) experts have biases)")
            }
            return ExpertWeights(gate: gate, up: up, down: down)
        }
        // One buffer: gate [width], up [width], down [hidden].
        let buffer = AlignedBuffer<Float>(count: 2 * width + hidden)
        for (projection, count, offset) in [("gate", width, 0), ("up", width, width), ("down", hidden, 2 * width)] {
            let name = "blk.\(layer).ffn_\(projection)_exps.bias"
            guard let (info, file) = tensors[name], info.dims == [count, config.expertCount] else {
                throw ModelFormatError.tensor(name, in: url.path, "missing or not [\(count), \(config.expertCount)]")
            }
            try checkComputable(info.type, tensor: name)
            guard let rowBytes = info.type.byteCount(elements: count) else {
                throw ModelFormatError.tensor(name, in: url.path, "\(count) elements are not whole \(info.type) blocks")
            }
            let bytes = files[file].bytes(of: info)
            GGMLDequantize.row(info.type, bytes.baseAddress! + expert * rowBytes, count: count, into: buffer.pointer + offset)
        }
        let biases = ExpertBiases(gate: UnsafePointer(buffer.pointer), up: UnsafePointer(buffer.pointer + width), down: UnsafePointer(buffer.pointer + 2 * width),
                                  width: width, hidden: hidden, owner: buffer)
        return ExpertWeights(gate: gate, up: up, down: down, biases: biases)
    }
}
