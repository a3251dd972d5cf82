import Foundation
import TensorMath

extension ExpertStorePacker {
    /// Packs a GGUF model (`pack FILE.gguf STORE`; a split model by its first part) into a new
    /// store at `destination`, keeping every tensor's ggml blocks bit for bit:
    ///
    /// - each routed expert's slice of the stacked `ffn_{gate,up,down}_exps` tensors becomes
    ///   one blob of dtype `ggml`, its three matrices in their own types (a Q4_K_M file mixes
    ///   Q4_K and Q6_K, and llama-quantize varies them between layers), recorded per blob;
    /// - every other tensor goes to dense.bin as the GGUF reader hands it to the model: block
    ///   types as their blocks (`ggml_type` in the manifest), F32/BF16 as such, F16 widened to
    ///   F32, 1-D tensors (norms, biases) as F32 (llama models' q/k rows already un-permuted);
    /// - the configuration read from the metadata is the manifest's `model_config`, and the
    ///   tokenizer is written as the `tokenizer.json`/`tokenizer_config.json` it maps to.
    ///
    /// - Q4_0 (which `GGUFModel` hands over converted to q4, `GGMLQ4_0`) is stored as q4: a dense
    ///   tensor as a q4 entry (`DenseTensorEntry.quantized`), the experts as a q4 store when every
    ///   expert matrix is Q4_0 (else their Q4_0 blocks are joined back and kept as ggml blocks).
    ///
    /// So `--model STORE` computes exactly what `--model FILE.gguf` computes. The packer's
    /// `dtype` must be `ggml` (the default `bf16` is taken to mean "as stored" too).
    public func pack(gguf: GGUFModel, to destination: URL) throws -> Summary {
        guard dtype == .ggml || dtype == .bf16 else {
            throw ModelFormatError.file(gguf.url.path, "a GGUF file is packed with its own ggml types, bit for bit; --experts \(dtype.rawValue) would re-quantize them (omit --experts)")
        }
        guard dense == .bf16 else {
            throw ModelFormatError.file(gguf.url.path, "a GGUF file's dense tensors keep their ggml types; --dense \(dense.rawValue) does not apply")
        }
        return try publish(to: destination) { try write(gguf: gguf, into: $0) }
    }

    /// The ggml type name a matrix from `GGUFModel` is stored under, and its bytes.
    static func ggmlBytes(_ matrix: WeightMatrix, tensor: String) throws -> (type: String, bytes: UnsafeRawBufferPointer) {
        let start: UnsafeRawPointer, type: String
        switch matrix.storage {
        case .f32(let w): (start, type) = (UnsafeRawPointer(w), GGMLType.f32.name)
        case .bf16(let w): (start, type) = (UnsafeRawPointer(w), GGMLType.bf16.name)
        case .mxfp4(let blocks): (start, type) = (UnsafeRawPointer(blocks), GGMLType.mxfp4.name)
        case .ggml(let t, let blocks): (start, type) = (UnsafeRawPointer(blocks), t.name)
        case .int8, .q4, .q4f16: throw ModelFormatError("\(tensor): a GGUF tensor came back in a MoEServe-only encoding")
        }
        return (type, UnsafeRawBufferPointer(start: start, count: matrix.byteCount))
    }

    /// `matrix` as ggml blocks: a q4 matrix (Q4_0 converted by `GGMLQ4_0`) joined back into
    /// Q4_0 blocks, bit for bit; any other as it is.
    static func asGGML(_ matrix: WeightMatrix) -> WeightMatrix {
        guard case .q4(let blocks, let scales) = matrix.storage else { return matrix }
        let count = matrix.rows * (matrix.cols / Quantization.q4BlockSize)
        let buffer = AlignedBuffer<UInt8>(count: max(1, count * GGMLQ4_0.blockBytes), zeroed: false)
        withExtendedLifetime(matrix) { GGMLQ4_0.join(blocks: blocks, scales: scales, blockCount: count, into: buffer.pointer) }
        return WeightMatrix(rows: matrix.rows, cols: matrix.cols, storage: .ggml(type: .q4_0, blocks: UnsafePointer(buffer.pointer)), owner: buffer)
    }

    private func write(gguf: GGUFModel, into directory: URL) throws -> Summary {
        let start = DispatchTime.now().uptimeNanoseconds
        func elapsed() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        let config = gguf.config
        let totalBytes = gguf.tensors.values.reduce(0) { $0 + $1.info.byteCount }
        var done = 0
        var lastReport = -Double.infinity
        func report(force: Bool = false) {
            guard let progress else { return }
            let now = elapsed()
            if force || now - lastReport >= progressInterval {
                lastReport = now
                progress(Progress(bytesDone: done, bytesTotal: totalBytes, seconds: now))
            }
        }

        // dense.bin: every mapped tensor the file has that is not a routed expert's slice.
        let denseNames = gguf.names.filter { $0.value.expert == nil && gguf.contains($0.key) }.keys.sorted()
        let denseWriter = try BinaryFileWriter(url: directory.appendingPathComponent("dense.bin"), faults: faults)
        var denseEntries: [DenseTensorEntry] = []
        for name in denseNames {
            let info = gguf.tensors[gguf.names[name]!.name]!.info
            try denseWriter.pad(to: 64)
            let offset = denseWriter.offset
            if info.dims.count == 1 {
                let values = try gguf.vector(name, count: info.dims[0])
                try values.withUnsafeBytes { bytes in
                    try denseWriter.write(bytes)
                    denseEntries.append(DenseTensorEntry(name: name, dtype: .f32, shape: [values.count], offset: offset,
                                                         length: bytes.count, checksum: StoreChecksum.packDefault.digest(bytes)))
                }
            } else {
                // A 3-D dense tensor (deepseek2's attn_k_b/attn_v_b) is packed as its slices stacked as rows.
                guard info.dims.count == 2 || info.dims.count == 3 else {
                    throw ModelFormatError.tensor(info.name, in: gguf.url.path, "ggml shape \(info.dims): only 1-D, 2-D and 3-D dense tensors are packed")
                }
                let (rows, cols) = (info.dims.dropFirst().reduce(1, *), info.dims[0])
                // A store's q4 keeps float32 scales: Q4_0's float16 ones widened (exactly).
                let matrix = GGMLQ4_0.floatScales(try gguf.matrix(name, rows: rows, cols: cols))
                if case .q4(_, let scales) = matrix.storage {
                    // Q4_0, converted by `GGMLQ4_0` (scales, padding, blocks: `DenseEncoding`'s q4 layout):
                    // stored as a q4 tensor, which loads straight onto the integer-dot kernels.
                    let length = GGMLQ4_0.convertedByteCount(rows: rows, cols: cols)
                    precondition(length == DenseEncoding.layout(.q4, rows: rows, cols: cols).length, "GGMLQ4_0's layout is DenseEncoding's")
                    let bytes = UnsafeRawBufferPointer(start: UnsafeRawPointer(scales), count: length)
                    let checksum = try withExtendedLifetime(matrix) {
                        try denseWriter.write(bytes)
                        return StoreChecksum.packDefault.digest(bytes)
                    }
                    denseEntries.append(DenseTensorEntry(name: name, dtype: .f32, shape: [rows, cols], offset: offset,
                                                         length: length, checksum: checksum, quantized: .q4))
                    done += info.byteCount
                    report()
                    continue
                }
                let (type, bytes) = try Self.ggmlBytes(matrix, tensor: info.name)
                let checksum = try withExtendedLifetime(matrix) { // `bytes` points into its buffer
                    try denseWriter.write(bytes)
                    return StoreChecksum.packDefault.digest(bytes)
                }
                switch matrix.storage {
                case .f32, .bf16:
                    denseEntries.append(DenseTensorEntry(name: name, dtype: type == "F32" ? .f32 : .bf16, shape: [rows, cols], offset: offset,
                                                         length: bytes.count, checksum: checksum))
                default:
                    denseEntries.append(DenseTensorEntry(name: name, dtype: .u8, shape: [rows, cols], offset: offset,
                                                         length: bytes.count, checksum: checksum, ggmlType: type))
                }
            }
            done += info.byteCount
            report()
        }
        try denseWriter.finish()

        // experts.bin: one blob per routed expert, its matrices' blocks copied as they are.
        let alignment = DirectFileReader.granule
        let expertWriter = try BinaryFileWriter(url: directory.appendingPathComponent("experts.bin"), faults: faults)
        var blobs: [ExpertBlobEntry] = []
        var shapes: [[Int]] = []
        var layouts: [[String]: ExpertBlobLayout] = [:]
        var rawTotal = 0, storedTotal = 0
        var exampleNames: [String] = []
        var hasBiases: Bool?
        // Experts all Q4_0 (what llama-quantize Q4_0 writes): a q4 store (the same values, see
        // `GGMLQ4_0`), served by the integer-dot kernels as the file's experts are; any other mix
        // keeps every matrix's ggml blocks (Q4_0 among them joined back, bit for bit).
        let q4Experts = GGMLQ4_0.convertsToQ4 && !config.moeLayers.isEmpty && config.moeLayers.allSatisfy { layer in
            ["gate", "up", "down"].allSatisfy { gguf.tensors["blk.\(layer).ffn_\($0)_exps.weight"]?.info.type == .q4_0 }
        }
        var q4Layout: ExpertBlobLayout?
        /// Encodes, writes and records one expert's blob (its matrices' ggml block types with `.ggml`).
        func writeBlob(_ raw: AlignedBuffer<UInt8>, layout: ExpertBlobLayout, dtype: ExpertDType, layer: Int, expert: Int,
                       ggmlTypes: [String]?) throws {
            let encoded = ExpertBlobCodec.encode(raw, rawLength: layout.rawLength, dtype: dtype, codec: codec, level: compressionLevel)
            try expertWriter.pad(to: alignment)
            let offset = expertWriter.offset
            let stored = UnsafeRawBufferPointer(start: encoded.bytes.pointer, count: encoded.length)
            try expertWriter.write(stored)
            var entry = ExpertBlobEntry(layer: layer, expert: expert, offset: offset, storedLength: encoded.length,
                                        rawLength: layout.rawLength, checksum: StoreChecksum.packDefault.digest(stored),
                                        storedRaw: encoded.storedRaw, planes: encoded.planes)
            entry.ggmlTypes = ggmlTypes
            blobs.append(entry)
            rawTotal += layout.rawLength
            storedTotal += encoded.length
            report()
            if let failAfterBlobs, blobs.count >= failAfterBlobs {
                throw ModelFormatError("pack interrupted after \(blobs.count) blobs (test hook)")
            }
        }
        for layer in config.moeLayers {
            for expert in 0..<config.expertCount {
                // The stacked tensors' slices (and gpt-oss's bias slices), as the model reads them.
                let names = ["gate", "up", "down"].map { "blk.\(layer).ffn_\($0)_exps.weight" }
                if exampleNames.isEmpty { exampleNames = names }
                let weights = try gguf.expert(layer: layer, expert: expert)
                let matrices = [weights.gate, weights.up, weights.down].map(GGMLQ4_0.floatScales) // q4 stores: float32 scales
                let ggmlMatrices = q4Experts ? [] : matrices.map(Self.asGGML)
                if hasBiases == nil { hasBiases = weights.biases != nil }
                let theseShapes = matrices.map { [$0.rows, $0.cols] }
                if shapes.isEmpty { shapes = theseShapes }
                guard theseShapes == shapes else {
                    throw ModelFormatError("layer \(layer) expert \(expert): shapes \(theseShapes) differ from the first expert's \(shapes)")
                }
                if q4Experts {
                    if q4Layout == nil {
                        q4Layout = try ExpertBlobLayout(dtype: .q4, gateShape: shapes[0], upShape: shapes[1], downShape: shapes[2],
                                                        biases: hasBiases ?? false)
                    }
                    let layout = q4Layout!
                    let raw = AlignedBuffer<UInt8>(count: layout.rawLength, alignment: alignment) // zeroed: padding is written
                    for ((matrix, name), target) in zip(zip(matrices, names), [layout.gate, layout.up, layout.down]) {
                        guard case .q4(let blocks, let scales) = matrix.storage, target.dtype == .q4 else {
                            throw ModelFormatError.tensor(name, in: gguf.url.path, "expert \(expert) of layer \(layer) did not come back as q4")
                        }
                        withExtendedLifetime(matrix) {
                            UnsafeMutableRawPointer(raw.pointer + target.scaleOffset!).copyMemory(
                                from: scales, byteCount: Quantization.q4ScaleBytes(rows: target.rows, cols: target.cols))
                            UnsafeMutableRawPointer(raw.pointer + target.dataOffset).copyMemory(from: blocks, byteCount: target.dataLength)
                        }
                        done += matrix.rows * (matrix.cols / Quantization.q4BlockSize) * GGMLQ4_0.blockBytes
                    }
                    if let biases = weights.biases { layout.encode(biases: biases, into: raw.pointer) }
                    try writeBlob(raw, layout: layout, dtype: .q4, layer: layer, expert: expert, ggmlTypes: nil)
                    continue
                }
                let parts = try zip(ggmlMatrices, names).map { try Self.ggmlBytes($0, tensor: $1) }
                let typeNames = parts.map(\.type)
                if layouts[typeNames] == nil {
                    let types = try typeNames.map { name -> GGMLType in
                        guard let type = GGMLType(storeName: name) else { throw ModelFormatError("ggml type \(name) cannot be stored") }
                        return type
                    }
                    layouts[typeNames] = try ExpertBlobLayout(dtype: .ggml, gateShape: shapes[0], upShape: shapes[1], downShape: shapes[2],
                                                              biases: hasBiases ?? false, ggmlTypes: types)
                }
                let layout = layouts[typeNames]!
                let raw = AlignedBuffer<UInt8>(count: layout.rawLength, alignment: alignment) // zeroed: padding is written
                // `parts` points into the matrices' buffers: keep them alive until copied.
                withExtendedLifetime(ggmlMatrices) {
                    for (part, target) in zip(parts, [layout.gate, layout.up, layout.down]) {
                        precondition(part.bytes.count == target.dataLength, "ggml matrix bytes differ from the layout's")
                        UnsafeMutableRawPointer(raw.pointer + target.dataOffset).copyMemory(from: part.bytes.baseAddress!, byteCount: part.bytes.count)
                        done += part.bytes.count
                    }
                }
                if let biases = weights.biases { layout.encode(biases: biases, into: raw.pointer) }
                try writeBlob(raw, layout: layout, dtype: .ggml, layer: layer, expert: expert, ggmlTypes: typeNames)
            }
        }
        try expertWriter.pad(to: alignment)
        try expertWriter.finish()

        // The tokenizer the metadata describes, as the files a Hugging Face directory has.
        var copied: [String] = []
        do {
            let files = try GGUFTokenizerFiles(metadata: gguf.metadata, file: gguf.url.path)
            for (name, data) in [("tokenizer.json", files.tokenizerJSON), ("tokenizer_config.json", files.tokenizerConfigJSON)] {
                let writer = try BinaryFileWriter(url: directory.appendingPathComponent(name), faults: faults)
                try data.withUnsafeBytes { try writer.write($0) }
                try writer.finish()
                copied.append(name)
            }
        } catch {
            warn?("note: the store has no tokenizer (\(error)); pass --tokens, or the GGUF file itself, where a tokenizer is needed")
        }

        let manifest = ExpertStoreManifest(
            format: ExpertStoreManifest.formatName,
            formatVersion: 5, // ggml types and model_config (3), CRC-32C checksums (5)
            architecture: config.architecture.rawValue,
            config: .object(["gguf_file": .string(gguf.url.lastPathComponent), "gguf_architecture": .string(gguf.ggufArchitecture),
                             "gguf_parts": .number(Double(gguf.files.count))]),
            experts: .init(file: "experts.bin", fileSize: expertWriter.offset, dtype: q4Experts ? .q4 : .ggml, codec: codec, alignment: alignment,
                           gateShape: shapes.first ?? [], upShape: shapes.count > 1 ? shapes[1] : [],
                           downShape: shapes.count > 2 ? shapes[2] : [], exampleTensorNames: exampleNames,
                           biases: hasBiases == true ? true : nil, blobs: blobs),
            dense: .init(file: "dense.bin", fileSize: denseWriter.offset, tensors: denseEntries),
            copiedFiles: copied,
            modelConfig: config,
            checksumAlgorithm: StoreChecksum.packDefault.rawValue)
        let manifestWriter = try BinaryFileWriter(url: directory.appendingPathComponent(ExpertStoreManifest.fileName), faults: faults)
        let manifestData = try manifest.encoded()
        try manifestData.withUnsafeBytes { try manifestWriter.write($0) }
        try manifestWriter.finish()
        report(force: true)
        return Summary(manifest: manifest, sourceBytes: totalBytes, expertRawBytes: rawTotal, expertStoredBytes: storedTotal, seconds: elapsed())
    }
}
