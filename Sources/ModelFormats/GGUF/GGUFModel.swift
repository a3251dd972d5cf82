import Foundation
import TensorMath

/// A model in GGUF files (llama.cpp, ollama, LM Studio), single or split
/// (`NAME-00001-of-0000N.gguf`, opened by its first part), served as a `WeightSource` under the
/// Hugging Face tensor names the models ask for.
///
/// - The configuration comes from the metadata of llama.cpp's architectures `qwen3moe`,
///   `qwen2moe`, `olmoe` and `llama` with experts (Mixtral); shapes settle what the metadata
///   leaves open (expert widths, dense layers, biases, tied embeddings).
/// - Tensors keep their ggml types bit for bit: F32, F16 and BF16 as such (F16 widened under `MOE_GGUF_F16=float`), Q4_0 as q4
///   (`GGMLQ4_0`: the same values), the other block types as `WeightStorage.ggml`; any other
///   type is an error naming the tensor and type.
/// - Routed experts are slices of the stacked `ffn_*_exps` tensors, read with `O_DIRECT`
///   (`DirectFileReader`) into buffers of their own, so expert reads come from the disk and
///   never leave the model in the page cache. Dense tensors are copied out of the mapping,
///   whose pages are then dropped from the resident set.
/// - llama.cpp's converter permutes the rows of `attn_q`/`attn_k` of `llama` models into
///   its interleaved RoPE order; they are permuted back here (rows are whole blocks, so
///   this is exact for every type).
public final class GGUFModel: WeightSource, @unchecked Sendable {
    /// The first (or only) file.
    public let url: URL
    /// Every part, in order.
    public let files: [GGUFFile]
    /// The configuration from the metadata.
    public let config: ModelConfig
    /// llama.cpp's architecture name (`general.architecture`).
    public let ggufArchitecture: String
    /// Each GGUF tensor and the part holding it.
    public let tensors: [String: (info: GGUFTensorInfo, file: Int)]
    /// Hugging Face name → GGUF tensor (and expert slice).
    public let names: [String: GGUFTensorReference]
    private let directReaders: [DirectFileReader]

    /// The metadata of the first part.
    public var metadata: [String: GGUFValue] { files[0].header.values }

    /// Whether `url` names a GGUF file (by its magic; a directory is not one).
    public static func isGGUF(at url: URL) -> Bool {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue else { return false }
        return GGUFFile.isGGUF(at: url.path)
    }

    /// The parts of a split model given its first part, or just `url`.
    static func partURLs(_ url: URL, count: Int?) throws -> [URL] {
        let name = url.lastPathComponent
        guard let range = name.range(of: #"-\d{5}-of-\d{5}\.gguf$"#, options: .regularExpression) else {
            if let count, count > 1 { throw ModelFormatError.file(url.path, "split.count is \(count) but the name is not NAME-00001-of-0000N.gguf") }
            return [url]
        }
        let digits = name[range].dropFirst().prefix(14) // "00001-of-00003"
        let parts = digits.split(separator: "-")
        guard parts.count == 3, let index = Int(parts[0]), let total = Int(parts[2]), total >= 1, total <= 9999 else { return [url] }
        guard index == 1 else { throw ModelFormatError.file(url.path, "part \(index) of a split GGUF: pass the first part (-00001-of-\(parts[2]).gguf)") }
        let stem = name[..<range.lowerBound]
        return (1...total).map { url.deletingLastPathComponent().appendingPathComponent(String(format: "%@-%05d-of-%05d.gguf", String(stem), $0, total)) }
    }

    /// Opens and validates the file (and its other parts).
    public init(url: URL) throws {
        self.url = url
        let first = try GGUFFile(path: url.path)
        let splitCount = first["split.count"]?.intValue
        var files = [first]
        for part in try Self.partURLs(url, count: splitCount).dropFirst() {
            guard FileManager.default.fileExists(atPath: part.path) else { throw ModelFormatError.file(part.path, "missing part of the split GGUF \(url.lastPathComponent)") }
            files.append(try GGUFFile(path: part.path))
        }
        if let splitCount, splitCount != files.count {
            throw ModelFormatError.file(url.path, "split.count is \(splitCount) but \(files.count) parts were found")
        }
        self.files = files
        var tensors: [String: (info: GGUFTensorInfo, file: Int)] = [:]
        for (index, file) in files.enumerated() {
            for info in file.header.tensors {
                guard tensors.updateValue((info, index), forKey: info.name) == nil else {
                    throw ModelFormatError.tensor(info.name, in: file.path, "also in another part of the split model")
                }
            }
        }
        if let expected = first["split.tensors.count"]?.intValue, expected != tensors.count {
            throw ModelFormatError.file(url.path, "split.tensors.count is \(expected) but the parts hold \(tensors.count) tensors")
        }
        self.tensors = tensors
        guard let architecture = first["general.architecture"]?.stringValue else {
            throw ModelFormatError.file(url.path, "no general.architecture in the metadata")
        }
        ggufArchitecture = architecture
        config = try GGUFConfigReader(values: first.header.values, tensors: tensors.mapValues(\.info), file: url.path).read()
        names = GGUFNames.map(config: config)
        directReaders = try files.map { try DirectFileReader(path: $0.path) }
    }

    /// The GGUF tensor behind Hugging Face name `name`.
    public func reference(_ name: String) -> GGUFTensorReference? { names[name] }

    public func contains(_ name: String) -> Bool {
        guard let reference = names[name], let (info, _) = tensors[reference.name] else { return false }
        if let expert = reference.expert { return info.dims.count == 3 && expert < info.dims[2] }
        return true
    }

    private func locate(_ name: String) throws -> (GGUFTensorReference, GGUFTensorInfo, Int) {
        guard let reference = names[name] else { throw ModelFormatError.tensor(name, in: url.path, "has no llama.cpp counterpart") }
        guard let (info, file) = tensors[reference.name] else {
            throw ModelFormatError.tensor(reference.name, in: url.path, "missing from the GGUF file (wanted for \(name))")
        }
        return (reference, info, file)
    }

    /// Throws unless `type` can be computed with, naming the tensor.
    func checkComputable(_ type: GGMLType, tensor: String) throws {
        guard type.isComputable else {
            let supported = GGMLType.computable.map(\.name).joined(separator: ", ")
            throw ModelFormatError.tensor(tensor, in: url.path, "type \(type) is not supported (supported: \(supported))")
        }
    }

    public func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
        let (reference, info, file) = try locate(name)
        try checkComputable(info.type, tensor: info.name)
        let byteCount: Int
        let offset: Int
        if let expert = reference.expert {
            guard info.dims == [cols, rows, info.dims.count == 3 ? info.dims[2] : -1], expert < info.dims[2] else {
                throw ModelFormatError.tensor(info.name, in: url.path, "ggml shape \(info.dims) does not hold expert \(expert) of [\(rows), \(cols)] (expected [\(cols), \(rows), experts])")
            }
            byteCount = info.byteCount / info.dims[2]
            offset = info.fileOffset + expert * byteCount
        } else {
            let flat = rows == 1 && info.dims == [cols]
            // A 3-D tensor read as its slices stacked as rows (deepseek2's attn_k_b/attn_v_b).
            let stacked = info.dims.count == 3 && info.dims[0] == cols && info.dims[1] * info.dims[2] == rows
            guard info.dims == [cols, rows] || flat || stacked else {
                throw ModelFormatError.tensor(info.name, in: url.path, "ggml shape \(info.dims) does not match [\(cols), \(rows)] (for \(name) [\(rows), \(cols)])")
            }
            byteCount = info.byteCount
            offset = info.fileOffset
        }
        let rowBytes = byteCount / rows
        let permutation = llamaRowPermutation(info.name, rows: rows)
        if reference.expert != nil {
            // O_DIRECT: read the 4 KiB-aligned span covering the slice into a buffer of its own.
            let granule = DirectFileReader.granule
            let start = offset / granule * granule
            let end = (offset + byteCount + granule - 1) / granule * granule
            let buffer = AlignedBuffer<UInt8>(count: end - start, alignment: granule, zeroed: false)
            let got = try directReaders[file].read(into: buffer.pointer, offset: start, length: end - start)
            guard got >= offset - start + byteCount else {
                throw ModelFormatError.tensor(info.name, in: files[file].path, "short read of expert \(reference.expert!) (\(got) bytes)")
            }
            return try wrap(UnsafeRawPointer(buffer.pointer + (offset - start)), type: info.type, rows: rows, cols: cols, owner: buffer, tensor: info.name)
        }
        let source = UnsafeRawPointer(files[file].bytes(of: info).baseAddress!) + (offset - info.fileOffset)
        defer { files[file].dropResidentPages(offset: offset, length: byteCount) }
        let buffer = AlignedBuffer<UInt8>(count: byteCount, zeroed: false)
        if let permutation {
            for (r, g) in permutation.enumerated() {
                (UnsafeMutableRawPointer(buffer.pointer) + r * rowBytes).copyMemory(from: source + g * rowBytes, byteCount: rowBytes)
            }
        } else {
            UnsafeMutableRawPointer(buffer.pointer).copyMemory(from: source, byteCount: byteCount)
        }
        return try wrap(UnsafeRawPointer(buffer.pointer), type: info.type, rows: rows, cols: cols, owner: buffer, tensor: info.name)
    }

    /// A matrix over `bytes` of `type`; F16 is kept as float16 (`GGMLF16`; widened into a buffer of its own
    /// under `MOE_GGUF_F16=float`), and Q4_0 is
    /// converted into one in the q4 layout (`GGMLQ4_0`: the same values, on the integer-dot kernels).
    private func wrap(_ bytes: UnsafeRawPointer, type: GGMLType, rows: Int, cols: Int, owner: AnyObject, tensor: String) throws -> WeightMatrix {
        switch type {
        case .q4_0 where GGMLQ4_0.convertsToQ4 && cols % Quantization.q4BlockSize == 0:
            return withExtendedLifetime(owner) { GGMLQ4_0.matrix(bytes, rows: rows, cols: cols) }
        case .f32: return WeightMatrix(rows: rows, cols: cols, storage: .f32(bytes.assumingMemoryBound(to: Float.self)), owner: owner)
        case .bf16: return WeightMatrix(rows: rows, cols: cols, storage: .bf16(bytes.assumingMemoryBound(to: UInt16.self)), owner: owner)
        case .f16 where GGMLF16.keepsHalves:
            // Kept as the file's float16, multiplied as llama.cpp does (float16 activations, GGMLF16).
            return WeightMatrix(rows: rows, cols: cols, storage: .ggml(type: .f16, blocks: bytes.assumingMemoryBound(to: UInt8.self)), owner: owner)
        case .f16:
            let buffer = AlignedBuffer<Float>(count: rows * cols, zeroed: false)
            GGMLDequantize.row(.f16, bytes, count: rows * cols, into: buffer.pointer)
            return WeightMatrix(rows: rows, cols: cols, storage: .f32(UnsafePointer(buffer.pointer)), owner: buffer)
        default:
            guard cols % type.blockSize == 0 else {
                throw ModelFormatError.tensor(tensor, in: url.path, "\(cols) columns are not a whole number of \(type) blocks")
            }
            return WeightMatrix(rows: rows, cols: cols, storage: .ggml(type: type, blocks: bytes.assumingMemoryBound(to: UInt8.self)), owner: owner)
        }
    }

    /// For `llama` models' `attn_q`/`attn_k`: the GGUF row holding each Hugging Face row.
    /// llama.cpp's converter stores row `h·D + s·D/2 + j` of head `h` (D = head_dim) at
    /// `h·D + 2j + s`, for its interleaved rotary embedding.
    func llamaRowPermutation(_ tensor: String, rows: Int) -> [Int]? {
        guard ggufArchitecture == "llama", tensor.hasSuffix(".attn_q.weight") || tensor.hasSuffix(".attn_k.weight") else { return nil }
        let d = config.headDim
        guard d % 2 == 0, rows % d == 0 else { return nil }
        return (0..<rows).map { r in
            let head = r / d, within = r % d
            let s = within / (d / 2), j = within % (d / 2)
            return head * d + 2 * j + s
        }
    }

    public func vector(_ name: String, count: Int) throws -> [Float] {
        let (reference, info, file) = try locate(name)
        guard reference.expert == nil, info.elementCount == count else {
            throw ModelFormatError.tensor(info.name, in: url.path, "ggml shape \(info.dims) does not match the config's \(count) elements")
        }
        try checkComputable(info.type, tensor: info.name)
        var values = [Float](repeating: 0, count: count)
        let bytes = files[file].bytes(of: info)
        values.withUnsafeMutableBufferPointer { GGMLDequantize.row(info.type, bytes.baseAddress!, count: count, into: $0.baseAddress!) }
        if let permutation = llamaRowPermutation(info.name.replacingOccurrences(of: ".bias", with: ".weight"), rows: count) {
            // A q/k bias is permuted like the rows of its weight.
            let stored = values
            for (r, g) in permutation.enumerated() { values[r] = stored[g] }
        }
        qwen3NextUnfold(&values, name: name, tensor: info.name) // GGUFQwen3Next.swift
        return values
    }

    /// Bytes of every tensor that is not a routed expert (what stays resident). Blocks past
    /// `config.layerCount` (GLM's next-token-prediction layers, never loaded) do not count.
    public var denseByteCount: Int {
        tensors.values.filter { !$0.info.name.contains("_exps.") && isLoadedLayer($0.info.name) }.reduce(0) { $0 + Self.residentBytes($1.info) }
    }

    /// Bytes `tensor` occupies once loaded: Q4_0 matrices become q4 (`GGMLQ4_0`: 18 bytes a block
    /// with float16 scales, 20 with `MOE_GGUF_Q4_0=q4`), everything else its size in the file.
    static func residentBytes(_ tensor: GGUFTensorInfo) -> Int {
        guard tensor.type == .q4_0, GGMLQ4_0.convertsToQ4, tensor.dims.count >= 2, tensor.dims[0] % Quantization.q4BlockSize == 0 else { return tensor.byteCount }
        return GGMLQ4_0.residentByteCount(rows: tensor.dims.dropFirst().reduce(1, *), cols: tensor.dims[0])
    }

    /// False for `blk.N.*` with N at or past the layers the model runs.
    private func isLoadedLayer(_ name: String) -> Bool {
        guard name.hasPrefix("blk."), let dot = name.dropFirst(4).firstIndex(of: "."), let layer = Int(name[name.index(name.startIndex, offsetBy: 4)..<dot]) else { return true }
        return layer < config.layerCount
    }

    /// Tensor infos grouped for `inspect`: group (the name without `blk.N.`) → type → count.
    public func typesByGroup() -> [(group: String, types: [(type: String, count: Int, bytes: Int)])] {
        var groups: [String: [String: (Int, Int)]] = [:]
        for (name, entry) in tensors {
            var group = name
            if name.hasPrefix("blk."), let dot = name.dropFirst(4).firstIndex(of: ".") { group = "blk.*." + name[name.index(after: dot)...] }
            let current = groups[group, default: [:]][entry.info.type.name] ?? (0, 0)
            groups[group, default: [:]][entry.info.type.name] = (current.0 + 1, current.1 + entry.info.byteCount)
        }
        return groups.keys.sorted().map { group in
            (group, groups[group]!.keys.sorted().map { (type: $0, count: groups[group]![$0]!.0, bytes: groups[group]![$0]!.1) })
        }
    }
}
