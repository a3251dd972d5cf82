import Foundation
import Testing
import TensorMath
@testable import ModelFormats

/// The committed GGUF fixtures (`scripts/gguf/make_dequant_fixture.py`, `make_gguf_fixtures.py`).
enum GGUFFixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/gguf")
    static let dequant = root.appendingPathComponent("dequant.gguf")
}

@Suite struct GGUFDequantizeTests {
    static let types: [GGMLType] = [.f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .iq4_NL, .iq4_XS, .mxfp4]

    /// Every type's blocks decode to what gguf-py's numpy dequantisation gives for the same bytes.
    @Test(arguments: types)
    func blocksDecodeAsGGUFPyDoes(type: GGMLType) throws {
        let file = try GGUFFile(path: GGUFFixtures.dequant.path)
        let infos = Dictionary(uniqueKeysWithValues: file.header.tensors.map { ($0.name, $0) })
        let packed = try #require(infos[type.name]), expected = try #require(infos[type.name + ".expected"])
        #expect(packed.type == type)
        #expect(packed.dims == [512, 2])
        let count = packed.elementCount
        var decoded = [Float](repeating: .nan, count: count)
        decoded.withUnsafeMutableBufferPointer { GGMLDequantize.row(type, file.bytes(of: packed).baseAddress!, count: count, into: $0.baseAddress!) }
        let reference = Array(file.bytes(of: expected).bindMemory(to: Float.self))
        var worst: Float = 0
        for (a, b) in zip(decoded, reference) { worst = max(worst, abs(a - b) / max(1e-3, abs(b))) }
        #expect(worst <= 1e-5, "\(type): worst relative difference \(worst)")
    }

    /// The SIMD kernels on `.ggml` storage (one row, several rows, the panel GEMM) give the
    /// product of the decoded weights with the activations rounded as llama.cpp rounds them.
    @Test(arguments: types.filter { $0 != .f16 && $0 != .bf16 })
    func kernelsMultiplyTheDecodedWeights(type: GGMLType) throws {
        let file = try GGUFFile(path: GGUFFixtures.dequant.path)
        let infos = Dictionary(uniqueKeysWithValues: file.header.tensors.map { ($0.name, $0) })
        let packed = try #require(infos[type.name]), expected = try #require(infos[type.name + ".expected"])
        let rows = 2, cols = 512
        let matrix = WeightMatrix(rows: rows, cols: cols, storage: .ggml(type: type, blocks: file.bytes(of: packed).baseAddress!.assumingMemoryBound(to: UInt8.self)), owner: file)
        let weights = Array(file.bytes(of: expected).bindMemory(to: Float.self))
        #expect(matrix.byteCount == packed.byteCount)
        #expect(zip(matrix.row(1), weights[cols...]).allSatisfy { abs($0 - $1) <= 1e-5 * max(1, abs($1)) })
        var random = SplitMix64(seed: UInt64(type.rawValue))
        for n in [1, 3, 12] {
            let x = (0..<(n * cols)).map { _ in random.nextFloat(in: -1..<1) }
            var y = [Float](repeating: 0, count: n * rows)
            x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { matrix.apply(xp.baseAddress!, rowCount: n, into: $0.baseAddress!) } }
            // llama.cpp's arithmetic: activations rounded to 8 bits per block first.
            var rounded = [Float](repeating: 0, count: n * cols)
            x.withUnsafeBufferPointer { xp in rounded.withUnsafeMutableBufferPointer { GGMLActivations.round(type, xp.baseAddress!, count: n * cols, into: $0.baseAddress!) } }
            #expect(zip(rounded, x).allSatisfy { abs($0 - $1) <= 1.0 / 127 } && rounded != x)
            for i in 0..<n {
                for r in 0..<rows {
                    var want: Double = 0
                    for c in 0..<cols { want += Double(weights[r * cols + c]) * Double(rounded[i * cols + c]) }
                    if type == .q4_1 || type == .q5_1 {
                        // Q8_1: each block's minimum m times s = float16(d·Σq), not float16(d)·Σq.
                        let blockBytes = type.blockBytes
                        let row = file.bytes(of: packed).baseAddress! + r * (cols / 32) * blockBytes
                        for b in 0..<(cols / 32) {
                            let block = x[(i * cols + 32 * b)..<(i * cols + 32 * b + 32)]
                            let amax = block.map(abs).max()!, d = amax / 127
                            let sum = block.map { ($0 * (127 / amax)).rounded(.toNearestOrEven) }.reduce(0, +)
                            let m = Float(Float16(bitPattern: row.loadUnaligned(fromByteOffset: b * blockBytes + 2, as: UInt16.self)))
                            want += Double(m) * (Double(Float(Float16(d * sum))) - Double(Float(Float16(d))) * Double(sum))
                        }
                    }
                    #expect(abs(Double(y[i * rows + r]) - want) <= 1e-4 * max(1, abs(want)), "\(type) n=\(n) row \(r)")
                }
            }
            if n > 1 {
                // Row-wise: each row exactly what it gets alone.
                var alone = [Float](repeating: 0, count: rows), rowwise = [Float](repeating: 0, count: n * rows)
                x.withUnsafeBufferPointer { xp in
                    rowwise.withUnsafeMutableBufferPointer { matrix.applyRowwise(xp.baseAddress!, rowCount: n, into: $0.baseAddress!) }
                    alone.withUnsafeMutableBufferPointer { matrix.apply(xp.baseAddress! + (n - 1) * cols, rowCount: 1, into: $0.baseAddress!) }
                }
                #expect(Array(rowwise[(n - 1) * rows..<n * rows]) == alone)
            }
        }
    }
}

@Suite struct GGUFReaderTests {
    @Test func metadataAndTensorInfosParse() throws {
        let file = try GGUFFile(path: GGUFFixtures.root.appendingPathComponent("qwen3moe-Q4_K_M.gguf").path)
        #expect(file.header.version == 3)
        #expect(file["general.architecture"]?.stringValue == "qwen3moe")
        #expect(file["qwen3moe.block_count"]?.intValue == 2)
        #expect(file["qwen3moe.rope.freq_base"]?.doubleValue == 10_000)
        #expect(file["tokenizer.ggml.add_bos_token"]?.boolValue == false)
        #expect(file["tokenizer.ggml.tokens"]?.arrayValue?.count == 1536)
        let gate = try #require(file.header.tensors.first { $0.name == "blk.0.ffn_gate_exps.weight" })
        #expect(gate.dims == [256, 128, 4])
        #expect(gate.type == .q4_K)
        #expect(gate.fileOffset % file.header.alignment == 0)
    }

    @Test func modelConfigComesFromTheMetadata() throws {
        let model = try GGUFModel(url: GGUFFixtures.root.appendingPathComponent("qwen2moe-Q8_0.gguf"))
        let config = model.config
        #expect(config.architecture == .qwen2Moe)
        #expect(config.hiddenSize == 64 && config.layerCount == 2 && config.headCount == 4 && config.kvHeadCount == 2)
        #expect(config.expertCount == 4 && config.expertsPerToken == 2 && config.expertIntermediateSize == 64)
        #expect(config.sharedExpertIntermediateSize == 96)
        #expect(config.attentionBias && !config.normTopKProb && !config.tieWordEmbeddings)
        #expect(config.vocabSize == 1536)
        let q3 = try GGUFModel(url: GGUFFixtures.root.appendingPathComponent("qwen3moe-Q4_K_M.gguf")).config
        #expect(q3.architecture == .qwen3Moe && q3.headDim == 64 && q3.normTopKProb && q3.tieWordEmbeddings)
        let mixtral = try GGUFModel(url: GGUFFixtures.root.appendingPathComponent("mixtral-Q8_0.gguf")).config
        #expect(mixtral.architecture == .mixtral && mixtral.slidingWindow == nil)
    }

    /// An expert is its slice of the stacked tensor, read with O_DIRECT, bit for bit.
    @Test func expertsAreSlicesOfTheStackedTensors() throws {
        let model = try GGUFModel(url: GGUFFixtures.root.appendingPathComponent("qwen3moe-Q4_K_M.gguf"))
        let names = model.config.architecture.definition.expertTensorNames(1, 3)
        let gate = try model.matrix(names.gate, rows: 128, cols: 256)
        guard case .ggml(let type, let blocks) = gate.storage else { Issue.record("expected ggml storage"); return }
        #expect(type == .q4_K)
        let (info, file) = try #require(model.tensors["blk.1.ffn_gate_exps.weight"])
        let slice = info.byteCount / 4
        let expected = UnsafeRawBufferPointer(rebasing: model.files[file].bytes(of: info)[(3 * slice)..<(4 * slice)])
        #expect(Array(expected) == Array(UnsafeRawBufferPointer(start: blocks, count: slice)))
        #expect(throws: ModelFormatError.self) { try model.matrix(names.gate, rows: 256, cols: 128) }
    }

    /// A truncated or damaged file is refused with one line, at every length.
    @Test func damagedFilesAreRefused() throws {
        let data = try Data(contentsOf: GGUFFixtures.root.appendingPathComponent("mixtral-Q4_0.gguf"))
        let bytes = [UInt8](data)
        func parse(_ b: [UInt8]) -> String? {
            b.withUnsafeBytes { do { _ = try GGUFFile.parse($0, path: "t.gguf"); return nil } catch { return "\(error)" } }
        }
        #expect(parse(bytes) == nil)
        for length in stride(from: 0, to: bytes.count - 1, by: 997) {
            #expect(parse(Array(bytes[0..<length])) != nil, "accepted a file truncated to \(length) bytes")
        }
        var badMagic = bytes; badMagic[0] = 0x46
        #expect(parse(badMagic)?.contains("bad magic") == true)
        var version = bytes; version[4] = 9
        #expect(parse(version)?.contains("version 9") == true)
        var hugeCount = bytes
        for i in 8..<16 { hugeCount[i] = 0xFF }
        #expect(parse(hugeCount)?.contains("exceeds the limit") == true)
        var hugeKVs = bytes
        for i in 16..<24 { hugeKVs[i] = 0x7F }
        #expect(parse(hugeKVs) != nil)
    }

    /// Unsupported tensor types name the tensor and the type; MXFP4 is computed.
    @Test func unsupportedTypesAreNamed() throws {
        let model = try GGUFModel(url: GGUFFixtures.root.appendingPathComponent("mixtral-Q8_0.gguf"))
        let message = { (type: GGMLType) -> String in
            do { try model.checkComputable(type, tensor: "blk.0.attn_q.weight"); return "" } catch { return "\(error)" }
        }
        #expect(message(.iq2_XXS).contains("blk.0.attn_q.weight") && message(.iq2_XXS).contains("IQ2_XXS is not supported"))
        #expect(message(.mxfp4) == "")
        #expect(message(.q4_K) == "")
    }

    @Test func splitNamesListEveryPart() throws {
        let parts = try GGUFModel.partURLs(URL(fileURLWithPath: "/m/model-00001-of-00003.gguf"), count: 3)
        #expect(parts.map(\.lastPathComponent) == ["model-00001-of-00003.gguf", "model-00002-of-00003.gguf", "model-00003-of-00003.gguf"])
        #expect(throws: ModelFormatError.self) { try GGUFModel.partURLs(URL(fileURLWithPath: "/m/model-00002-of-00003.gguf"), count: 3) }
    }
}
