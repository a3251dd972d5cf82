import Foundation
import TensorMath

/// How routed experts are stored in an expert store.
public enum ExpertDType: String, Codable, Sendable, CaseIterable {
    /// bfloat16, exact for bf16 checkpoints.
    case bf16
    /// float32, exact for f32 (and bf16/f16) checkpoints.
    case f32
    /// int8 with one float32 scale per row.
    case int8
    /// 4-bit, blocks of 32 weights with one float32 scale each.
    case q4
    /// MXFP4: blocks of 32 e2m1 values with one e8m0 exponent, llama.cpp's `block_mxfp4`
    /// layout; exact for gpt-oss's MXFP4 checkpoints.
    case mxfp4
    /// Each matrix in its own ggml type, the blocks of a GGUF file kept bit for bit (`pack
    /// FILE.gguf`); the types of each blob are in its `ExpertBlobEntry.ggmlTypes`.
    case ggml
}

/// How expert blobs are compressed.
public enum ExpertCodec: String, Codable, Sendable, CaseIterable {
    /// Stored as laid out in RAM.
    case none
    /// LZ4 (LZ4-HC at pack time); bf16 blobs split into a sign/exponent and a mantissa byte plane.
    case lz4
}

/// `manifest.json` of an expert store: everything needed to find, check and decode every
/// byte of `dense.bin` and `experts.bin`. Written last by the packer, so a directory without
/// it is not a store.
public struct ExpertStoreManifest: Codable, Sendable {
    /// The `format` value every manifest carries.
    public static let formatName = "moe-serve-expert-store"
    /// The newest format version this build reads. Version 2 adds quantised dense tensors
    /// (`DenseTensorEntry.quantized`); version 3 ggml-typed tensors (`pack FILE.gguf`:
    /// `ExpertDType.ggml`, `DenseTensorEntry.ggmlType`, `modelConfig`) and q4 stores whose
    /// matrices of a width 32 does not divide fell back to int8. A store without any of these
    /// is still written as the oldest version that reads it, so older builds keep reading it.
    /// Version 4 adds low-bit copies of the experts (`lowBitCopies`, `LowBitCopies`). Version 5
    /// CRC-32C checksums (`checksumAlgorithm`, `StoreChecksum`), which every store packed since
    /// session 33 carries.
    public static let currentFormatVersion = 5
    /// Name of the manifest file inside a store directory.
    public static let fileName = "manifest.json"

    /// Always `formatName`.
    public var format: String
    /// Layout version; a reader refuses versions newer than `currentFormatVersion`.
    public var formatVersion: Int
    /// Hugging Face architecture class name, e.g. `MixtralForCausalLM`.
    public var architecture: String
    /// The original `config.json`, verbatim.
    public var config: JSONValue
    /// The routed experts.
    public var experts: ExpertSection
    /// The non-expert tensors.
    public var dense: DenseSection
    /// Files copied from the checkpoint directory (tokenizer, config, generation config).
    public var copiedFiles: [String]
    /// The configuration itself, for stores packed from a GGUF file (whose hyper-parameters
    /// come from GGUF metadata, not a config.json; `config` then names the source); nil when
    /// `config` is a config.json.
    public var modelConfig: ModelConfig? = nil
    /// A 2-bit copy of every routed expert, appended to `experts.bin` (`pack --low-bit-copies`,
    /// `moe-serve low-bit-copies`); nil in stores without them.
    public var lowBitCopies: LowBitCopiesSection? = nil
    /// The checksum of every blob and dense tensor (`StoreChecksum`); nil in stores before
    /// session 33, which are XXH64.
    public var checksumAlgorithm: String? = nil

    /// The routed experts' storage: one blob per (layer, expert) in `file`.
    public struct ExpertSection: Codable, Sendable {
        /// Data file name, `experts.bin`.
        public var file: String
        /// Expected size of the data file in bytes (a multiple of `alignment`).
        public var fileSize: Int
        /// Element encoding of the expert matrices.
        public var dtype: ExpertDType
        /// Compression of the blobs.
        public var codec: ExpertCodec
        /// Every blob starts at a multiple of this (4096, the O_DIRECT granule).
        public var alignment: Int
        /// `[expertWidth, hidden]`
        public var gateShape: [Int]
        /// `[expertWidth, hidden]`
        public var upShape: [Int]
        /// `[hidden, expertWidth]`
        public var downShape: [Int]
        /// The checkpoint's tensor names of expert 0 of the first MoE layer, for reference.
        public var exampleTensorNames: [String]
        /// Blobs carry the float32 gate, up and down biases after the matrices (gpt-oss);
        /// absent in stores of architectures without them.
        public var biases: Bool? = nil
        /// One entry per routed expert, ordered by layer then expert.
        public var blobs: [ExpertBlobEntry]
    }

    /// The dense tensors, each at a 64-byte-aligned offset in `file`, in its checkpoint dtype.
    public struct DenseSection: Codable, Sendable {
        /// Data file name, `dense.bin`.
        public var file: String
        /// Expected size of the data file in bytes.
        public var fileSize: Int
        /// The tensors, sorted by name.
        public var tensors: [DenseTensorEntry]
    }

    /// Reads and validates `manifest.json` in `directory`, with errors a user can act on.
    public static func load(from directory: URL) throws -> ExpertStoreManifest {
        let url = directory.appendingPathComponent(fileName)
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw ModelFormatError.file(url.path, "cannot read the store manifest: \(error.localizedDescription)")
        }
        return try parse(data, path: url.path)
    }

    /// Decodes and validates manifest JSON read from `path` (named in errors).
    public static func parse(_ data: Data, path: String) throws -> ExpertStoreManifest {
        // The version is checked before the full schema so that a newer store says so rather
        // than failing on whatever field changed.
        struct Header: Decodable { var format: String?; var formatVersion: Int? }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        guard let header = try? decoder.decode(Header.self, from: data) else {
            throw ModelFormatError.file(path, "damaged store manifest: not valid JSON (re-run moe-serve pack)")
        }
        guard header.format == formatName, let version = header.formatVersion else {
            throw ModelFormatError.file(path, "not an expert store manifest (missing format '\(formatName)' or format_version)")
        }
        guard version <= currentFormatVersion else {
            throw ModelFormatError.file(path, "store format version \(version) is newer than this moe-serve supports (\(currentFormatVersion)); upgrade moe-serve or re-pack the model")
        }
        do {
            return try decoder.decode(ExpertStoreManifest.self, from: data)
        } catch {
            throw ModelFormatError.file(path, "damaged store manifest: \(describe(error)) (re-run moe-serve pack)")
        }
    }

    /// The manifest as pretty-printed JSON with snake_case keys.
    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }

    private static func describe(_ error: Error) -> String {
        switch error as? DecodingError {
        case .keyNotFound(let key, let context)?:
            return "missing '\(key.stringValue)' at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        case .typeMismatch(_, let context)?, .valueNotFound(_, let context)?, .dataCorrupted(let context)?:
            return "bad value at \(context.codingPath.map(\.stringValue).joined(separator: ".")): \(context.debugDescription)"
        default:
            return "\(error)"
        }
    }
}

/// Where one routed expert's blob is and how to check and decode it.
public struct ExpertBlobEntry: Codable, Sendable, Equatable {
    /// Layer index.
    public var layer: Int
    /// Expert index within the layer.
    public var expert: Int
    /// Byte offset in `experts.bin` (a multiple of the alignment).
    public var offset: Int
    /// Bytes on disk (before padding to the alignment).
    public var storedLength: Int
    /// Bytes after decompression: the in-RAM layout of `ExpertBlobLayout`.
    public var rawLength: Int
    /// XXH64 of the stored bytes, 16 hex digits.
    public var checksum: String
    /// The blob is stored uncompressed (always with codec `none`; with `lz4` when compression
    /// saved less than 3%).
    public var storedRaw: Bool
    /// The compressed planes in storage order when `storedRaw` is false: for bf16 the
    /// sign/exponent (high) bytes then the mantissa (low) bytes, otherwise one plane.
    public var planes: [ExpertPlaneEntry]
    /// ggml type names of the gate, up and down matrices (`Q4_K`, `Q6_K`, `F32`, ...) when the
    /// store's dtype is `ggml`; they may differ between layers, as llama-quantize mixes them.
    public var ggmlTypes: [String]? = nil

    /// Creates an entry.
    public init(layer: Int, expert: Int, offset: Int, storedLength: Int, rawLength: Int, checksum: String,
                storedRaw: Bool, planes: [ExpertPlaneEntry]) {
        self.layer = layer
        self.expert = expert
        self.offset = offset
        self.storedLength = storedLength
        self.rawLength = rawLength
        self.checksum = checksum
        self.storedRaw = storedRaw
        self.planes = planes
    }
}

/// One byte plane of a compressed blob.
public struct ExpertPlaneEntry: Codable, Sendable, Equatable {
    /// Bytes on disk.
    public var storedLength: Int
    /// Bytes after decompression.
    public var rawLength: Int
    /// Stored uncompressed because LZ4 saved less than 3%.
    public var storedRaw: Bool

    /// Creates an entry.
    public init(storedLength: Int, rawLength: Int, storedRaw: Bool) {
        self.storedLength = storedLength
        self.rawLength = rawLength
        self.storedRaw = storedRaw
    }
}

/// One dense tensor in `dense.bin`.
public struct DenseTensorEntry: Codable, Sendable {
    /// Checkpoint name.
    public var name: String
    /// Checkpoint dtype, kept as is.
    public var dtype: TensorDType
    /// Shape, outermost first.
    public var shape: [Int]
    /// Byte offset in `dense.bin` (a multiple of 64).
    public var offset: Int
    /// Bytes.
    public var length: Int
    /// XXH64 of the bytes, 16 hex digits.
    public var checksum: String
    /// How the bytes encode the tensor when `pack --dense` quantised it (`int8` or `q4`, laid
    /// out as `DenseEncoding` describes; `dtype` is then the checkpoint's); nil: raw `dtype`.
    public var quantized: ExpertDType? = nil
    /// The ggml type name (`Q4_K`, `Q6_K`, ...) of a matrix kept in a GGUF file's blocks, bit
    /// for bit (`dtype` is then `u8`, `shape` the logical `[rows, cols]`); nil otherwise.
    public var ggmlType: String? = nil
}

extension GGMLType {
    /// The computable ggml type (or MXFP4) called `name` (`Q4_K`), nil for any other name.
    public init?(storeName name: String) {
        guard let type = (GGMLType.computable + [.mxfp4]).first(where: { $0.name == name }) else { return nil }
        self = type
    }
}
