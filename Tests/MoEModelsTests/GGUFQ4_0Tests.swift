import Foundation
import Testing
import ModelFormats
import TensorMath
@testable import MoEModels

/// GGUF Q4_0 files on the integer-dot q4 kernels (issue 22): their matrices come out of the
/// reader as q4 (`GGMLQ4_0`), compute what a q4 matrix of the file's blocks computes, and a
/// sequence's logits no longer depend on how its prompt is chunked or what shares its step
/// (which is what lets `Engine.partialPromptReuse` take partial prompt-cache hits on such files).
@Suite struct GGUFQ4_0Tests {
    static let fixtures = ["qwen3moe-Q4_0.gguf", "qwen2moe-Q4_0.gguf"]

    /// The attention query projection of block 0 and an expert's gate are q4, and the query
    /// projection multiplies exactly as a q4 matrix split by hand from the file's bytes.
    @Test(arguments: fixtures)
    func q4_0MatricesAreQ4(name: String) throws {
        guard GGMLQ4_0.convertsToQ4, IntegerDotKernels.level != nil else { return } // MOE_GGUF_Q4_0=ggml / MOE_KERNELS=float
        let gguf = try GGUFModel(url: LlamaCppReference.root.appendingPathComponent(name))
        let (info, file) = try #require(gguf.tensors["blk.0.attn_q.weight"])
        #expect(info.type == .q4_0)
        let hfName = try #require(gguf.names.first { $0.value.name == info.name && $0.value.expert == nil }?.key)
        let (rows, cols) = (info.dims[1], info.dims[0])
        let matrix = try gguf.matrix(hfName, rows: rows, cols: cols)
        // q4 with the file's float16 scales (18 bytes a block) by default, float32 ones with MOE_GGUF_Q4_0=q4.
        func isQ4(_ storage: WeightStorage) -> Bool {
            switch storage {
            case .q4f16: return GGMLQ4_0.keepsHalfScales
            case .q4: return !GGMLQ4_0.keepsHalfScales
            default: return false
            }
        }
        guard isQ4(matrix.storage) else { Issue.record("\(hfName) is \(matrix.storage), not q4"); return }
        let layer = try #require(gguf.config.moeLayers.first)
        guard isQ4(try gguf.expert(layer: layer, expert: 1).gate.storage) else { Issue.record("expert gate not q4"); return }

        let raw = gguf.files[file].bytes(of: info)
        let blockCount = rows * cols / 32
        let blocks = AlignedBuffer<UInt8>(count: blockCount * 16), scales = AlignedBuffer<Float>(count: blockCount)
        for b in 0..<blockCount {
            scales.pointer[b] = Float(Float16(bitPattern: UInt16(raw[b * 18]) | UInt16(raw[b * 18 + 1]) << 8))
            for j in 0..<16 { blocks.pointer[b * 16 + j] = raw[b * 18 + 2 + j] }
        }
        let byHand = WeightMatrix(rows: rows, cols: cols, storage: .q4(blocks: blocks.pointer, scales: scales.pointer), owner: blocks)
        for n in [1, 3, 12] {
            let x = (0..<(n * cols)).map { Float(sin(Double($0) * 0.37)) }
            var a = [Float](repeating: .nan, count: n * rows), b = a
            x.withUnsafeBufferPointer { xs in
                a.withUnsafeMutableBufferPointer { matrix.apply(xs.baseAddress!, rowCount: n, into: $0.baseAddress!) }
                b.withUnsafeMutableBufferPointer { byHand.apply(xs.baseAddress!, rowCount: n, into: $0.baseAddress!) }
            }
            #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "\(n) rows")
        }
    }

    /// `Engine`'s exactness probe on a Q4_0 file: an 80-token prompt as one chunk against chunks
    /// of 1, 4, 19 and 56 tokens, the last beside another sequence: the same logits bit for bit.
    @Test(arguments: fixtures)
    func logitsAreTheSameAloneOrBatched(name: String) throws {
        guard GGMLQ4_0.convertsToQ4, IntegerDotKernels.level != nil else { return }
        let model = try ModelLoader.load(at: LlamaCppReference.root.appendingPathComponent(name))
        let vocab = model.config.vocabSize
        let length = min(80, model.config.maxPositionEmbeddings - 1)
        let tokens = (0..<length).map { ($0 * 7919 + 13) % vocab }
        let whole = try model.forward([SequenceInput(cache: model.makeCache(), tokens: tokens)])[0]
        let split = model.makeCache()
        var first = 0
        var last: [Float] = []
        for size in [1, 4, 19, length] where first < length {
            let piece = Array(tokens[first..<min(length, first + size)])
            first += piece.count
            var inputs = [SequenceInput(cache: split, tokens: piece)]
            if first == length { inputs.append(SequenceInput(cache: model.makeCache(), tokens: [1, 2, 3].map { $0 % vocab })) }
            last = try model.forward(inputs)[0]
        }
        #expect(whole.map(\.bitPattern) == last.map(\.bitPattern), "\(name): chunked or batched logits differ from the whole prompt's")
    }
}
