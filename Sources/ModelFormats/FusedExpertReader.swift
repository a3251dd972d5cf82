import TensorMath

/// Reads single routed experts out of a checkpoint that stores each layer's experts fused
/// (`FusedExpertNames`, gpt-oss), as the `gate`/`up`/`down` matrices `[out, in]` and biases the
/// rest of MoEServe uses:
///
/// - bf16/f32 `gate_up_proj` `[experts, hidden, 2·width]` (used as `x · W`): gate row i is
///   column 2i, up row i column 2i+1, transposed into `[width, hidden]` matrices, bits kept
///   (bf16 stays bf16, f16 is widened); `down_proj` `[experts, width, hidden]` transposed into
///   `[hidden, width]`.
/// - MXFP4 `<name>_blocks` `[experts, rows, cols/32, 16]` + `<name>_scales`
///   `[experts, rows, cols/32]`, rows the outputs: gate rows are the even rows of `gate_up`,
///   up rows the odd ones; every block is repacked exactly into the `block_mxfp4` layout
///   (`MXFP4`), so nothing is rounded.
/// - biases `gate_up_proj_bias` `[experts, 2·width]` (even: gate, odd: up) and
///   `down_proj_bias` `[experts, hidden]`, widened to float32.
public struct FusedExpertReader: Sendable {
    public let checkpoint: CheckpointDirectory
    public let config: ModelConfig
    public let names: @Sendable (Int) -> FusedExpertNames

    /// A reader over `checkpoint`, nil when its architecture stores experts one by one.
    public init?(checkpoint: CheckpointDirectory, description: ArchitectureDescription) {
        guard let names = description.fusedExperts else { return nil }
        self.checkpoint = checkpoint
        config = checkpoint.config
        self.names = names
    }

    /// Whether layer `layer`'s experts are stored in MXFP4.
    public func isMXFP4(layer: Int) -> Bool { checkpoint.contains(names(layer).gateUp + "_blocks") }

    /// The checkpoint tensors that hold layer `layer`'s routed experts.
    public func tensorNames(layer: Int) -> [String] { names(layer).allNames.filter(checkpoint.contains) }

    /// Expert `expert` of layer `layer`, in matrices and biases that own their memory.
    public func expert(layer: Int, expert: Int) throws -> ExpertWeights {
        let n = names(layer)
        let hidden = config.hiddenSize, width = config.expertIntermediateSize
        let gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix
        if isMXFP4(layer: layer) {
            gate = try mxfp4Rows(n.gateUp, expert: expert, rows: 2 * width, cols: hidden, first: 0, step: 2)
            up = try mxfp4Rows(n.gateUp, expert: expert, rows: 2 * width, cols: hidden, first: 1, step: 2)
            down = try mxfp4Rows(n.down, expert: expert, rows: hidden, cols: width, first: 0, step: 1)
        } else {
            // gate_up: [E, hidden, 2·width]; element (h, 2i + parity) is gate/up[i][h]
            gate = try transposed(n.gateUp, expert: expert, inner: hidden, outer: 2 * width, first: 0, step: 2)
            up = try transposed(n.gateUp, expert: expert, inner: hidden, outer: 2 * width, first: 1, step: 2)
            // down: [E, width, hidden]; element (i, h) is down[h][i]
            down = try transposed(n.down, expert: expert, inner: width, outer: hidden, first: 0, step: 1)
        }
        let gateUpBias = try floats(n.gateUpBias, expert: expert, count: 2 * width, experts: config.expertCount)
        let downBias = try floats(n.downBias, expert: expert, count: hidden, experts: config.expertCount)
        let biases = ExpertBiases(gate: stride(from: 0, to: 2 * width, by: 2).map { gateUpBias[$0] },
                                  up: stride(from: 1, to: 2 * width, by: 2).map { gateUpBias[$0] }, down: downBias)
        return ExpertWeights(gate: gate, up: up, down: down, biases: biases)
    }

    /// The entry of `name`, checked to be `[experts] + shape` of `dtypes`.
    private func entry(_ name: String, shape: [Int], dtypes: [TensorDType]) throws -> (SafetensorsEntry, SafetensorsFile) {
        let (entry, file) = try checkpoint.entry(name)
        let expected = [config.expertCount] + shape
        guard entry.shape == expected else {
            throw ModelFormatError.tensor(name, in: file.path, "shape \(entry.shape) does not match the config's \(expected)")
        }
        guard dtypes.contains(entry.dtype) else {
            throw ModelFormatError.tensor(name, in: file.path, "dtype \(entry.dtype.rawValue) is not one of \(dtypes.map(\.rawValue))")
        }
        return (entry, file)
    }

    /// Rows `first, first + step, ...` of expert `expert` of a `[E, rows, cols]` matrix stored
    /// transposed as `[E, cols(inner), rows(outer)]`: the result is `[outer/step, inner]`.
    private func transposed(_ name: String, expert: Int, inner: Int, outer: Int, first: Int, step: Int) throws -> WeightMatrix {
        let (entry, file) = try entry(name, shape: [inner, outer], dtypes: [.bf16, .f32, .f16])
        let base = file.bytes(of: entry).baseAddress! + expert * inner * outer * entry.dtype.size
        let rows = outer / step
        defer { file.dropResidentPages(of: entry) }
        switch entry.dtype {
        case .bf16:
            let buffer = AlignedBuffer<UInt16>(count: rows * inner)
            for r in 0..<rows {
                let column = first + r * step
                for c in 0..<inner {
                    buffer[r * inner + c] = base.loadUnaligned(fromByteOffset: (c * outer + column) * 2, as: UInt16.self)
                }
            }
            return WeightMatrix(rows: rows, cols: inner, storage: .bf16(UnsafePointer(buffer.pointer)), owner: buffer)
        default:
            let buffer = AlignedBuffer<Float>(count: rows * inner)
            for r in 0..<rows {
                let column = first + r * step
                for c in 0..<inner {
                    let offset = c * outer + column
                    buffer[r * inner + c] = entry.dtype == .f32
                        ? base.loadUnaligned(fromByteOffset: offset * 4, as: Float.self)
                        : FloatConversion.float(fromF16: base.loadUnaligned(fromByteOffset: offset * 2, as: UInt16.self))
                }
            }
            return WeightMatrix(rows: rows, cols: inner, storage: .f32(UnsafePointer(buffer.pointer)), owner: buffer)
        }
    }

    /// Rows `first, first + step, ...` of expert `expert` of the MXFP4 matrix `name`
    /// (`[E, rows, cols]` as `_blocks` and `_scales`), repacked into `block_mxfp4` blocks.
    private func mxfp4Rows(_ name: String, expert: Int, rows: Int, cols: Int, first: Int, step: Int) throws -> WeightMatrix {
        guard cols % MXFP4.blockSize == 0 else {
            throw ModelFormatError.tensor(name + "_blocks", in: checkpoint.url.path, "MXFP4 needs \(cols) inputs to be a multiple of 32")
        }
        let groups = cols / MXFP4.blockSize
        let (blockEntry, blockFile) = try entry(name + "_blocks", shape: [rows, groups, 16], dtypes: [.u8])
        let (scaleEntry, scaleFile) = try entry(name + "_scales", shape: [rows, groups], dtypes: [.u8])
        defer { blockFile.dropResidentPages(of: blockEntry); scaleFile.dropResidentPages(of: scaleEntry) }
        let blocks = blockFile.bytes(of: blockEntry).baseAddress!.assumingMemoryBound(to: UInt8.self) + expert * rows * groups * 16
        let scales = scaleFile.bytes(of: scaleEntry).baseAddress!.assumingMemoryBound(to: UInt8.self) + expert * rows * groups
        let outRows = rows / step
        let buffer = AlignedBuffer<UInt8>(count: MXFP4.byteCount(rows: outRows, cols: cols))
        for r in 0..<outRows {
            let source = first + r * step
            for g in 0..<groups {
                MXFP4.repack(huggingFaceBlock: blocks + (source * groups + g) * 16, scale: scales[source * groups + g],
                             into: buffer.pointer + (r * groups + g) * MXFP4.blockBytes)
            }
        }
        return WeightMatrix(rows: outRows, cols: cols, storage: .mxfp4(blocks: UnsafePointer(buffer.pointer)), owner: buffer)
    }

    /// Expert `expert`'s `count` values of the `[experts, count]` tensor `name`, as float32.
    private func floats(_ name: String, expert: Int, count: Int, experts: Int) throws -> [Float] {
        let (entry, file) = try entry(name, shape: [count], dtypes: [.bf16, .f32, .f16])
        let size = entry.dtype.size
        let bytes = UnsafeRawBufferPointer(rebasing: file.bytes(of: entry)[(expert * count * size)..<((expert + 1) * count * size)])
        var values = [Float](repeating: 0, count: count)
        values.withUnsafeMutableBufferPointer { CheckpointDirectory.widen(bytes, dtype: entry.dtype, into: $0.baseAddress!, count: count) }
        return values
    }
}

extension FusedExpertReader {
    /// The reader for `weights` when `description` stores experts fused, nil when it does not;
    /// fused experts are read from a checkpoint directory only (a packed store holds them as
    /// blobs, one per expert), so any other source is an error.
    public static func of(_ weights: WeightSource, description: ArchitectureDescription) throws -> FusedExpertReader? {
        guard description.fusedExperts != nil else { return nil }
        guard let checkpoint = weights as? CheckpointDirectory else {
            throw ModelFormatError("\(description.className) stores its experts fused; they are read from a checkpoint directory or a packed store")
        }
        return FusedExpertReader(checkpoint: checkpoint, description: description)
    }
}
