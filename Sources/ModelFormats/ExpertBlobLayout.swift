import TensorMath

/// The in-RAM layout of one expert's blob (after decompression): gate, up and down one after
/// another, every array starting on a 64-byte boundary so the matrices can point straight into
/// the buffer a blob was read into, with no copy.
///
/// Per matrix: bf16/f32 → the elements; int8 → scales `[rows]` f32, then values `[rows, cols]`;
/// q4 → scales `[rows, cols/32]` f32, then blocks `[rows, cols/32, 16]`; mxfp4 → blocks
/// `[rows, cols/32, 17]` (`MXFP4`); ggml → the matrix's ggml blocks `[rows, cols/blockSize]`
/// as a GGUF file holds them (F32 and BF16 as plain elements). Experts with biases (gpt-oss)
/// then have the float32 gate `[expertWidth]`, up `[expertWidth]` and down `[hidden]` biases,
/// each 64-byte aligned.
///
/// In a q4 layout a matrix whose input width 32 does not divide is int8 instead (per-row
/// scales), as llama-quantize falls back for such tensors; `int8Fallbacks` names them.
public struct ExpertBlobLayout: Sendable, Equatable {
    /// Where one matrix's arrays sit in the blob.
    public struct Matrix: Sendable, Equatable {
        /// `[rows, cols]`
        public let rows: Int, cols: Int
        /// Offset of the elements (values or q4 blocks).
        public let dataOffset: Int
        /// Length of the elements.
        public let dataLength: Int
        /// Offset of the scales (int8, q4), nil otherwise.
        public let scaleOffset: Int?
        /// This matrix's encoding: the layout's dtype, except int8 for a q4 layout's matrix
        /// of a width 32 does not divide.
        public var dtype: ExpertDType = .bf16
        /// The ggml type of a `ggml` matrix (F32, BF16 or a block type), nil otherwise.
        public var ggmlType: GGMLType? = nil
    }

    /// Element encoding.
    public let dtype: ExpertDType
    /// `[expertWidth, hidden]`
    public let gate: Matrix
    /// `[expertWidth, hidden]`
    public let up: Matrix
    /// `[hidden, expertWidth]`
    public let down: Matrix
    /// Total bytes (a multiple of 64).
    public let rawLength: Int
    /// Offsets of the gate, up and down biases, nil when the experts have none.
    public let biasOffsets: (gate: Int, up: Int, down: Int)?

    public static func == (a: ExpertBlobLayout, b: ExpertBlobLayout) -> Bool {
        a.dtype == b.dtype && a.gate == b.gate && a.up == b.up && a.down == b.down && a.rawLength == b.rawLength
            && a.biasOffsets?.gate == b.biasOffsets?.gate && a.biasOffsets?.up == b.biasOffsets?.up
            && a.biasOffsets?.down == b.biasOffsets?.down
    }

    /// The matrices ("gate 24x20") that a q4 layout keeps in int8 because 32 does not divide
    /// their input width; empty for other layouts.
    public var int8Fallbacks: [String] {
        guard dtype == .q4 else { return [] }
        return [("gate", gate), ("up", up), ("down", down)].filter { $0.1.dtype == .int8 }.map { "\($0.0) \($0.1.rows)x\($0.1.cols)" }
    }

    /// The gate, up and down ggml types of a `ggml` layout, nil otherwise.
    public var ggmlTypes: [GGMLType]? {
        guard dtype == .ggml else { return nil }
        return [gate, up, down].compactMap(\.ggmlType)
    }

    /// Alignment of every array inside a blob.
    public static let arrayAlignment = 64

    /// The layout for matrices of these shapes in `dtype`; `ggmlTypes` (gate, up, down) is
    /// required for `ggml` and ignored otherwise.
    public init(dtype: ExpertDType, gateShape: [Int], upShape: [Int], downShape: [Int], biases: Bool = false,
                ggmlTypes: [GGMLType]? = nil) throws {
        self.dtype = dtype
        var cursor = 0
        func place(_ shape: [Int], _ name: String, _ index: Int) throws -> Matrix {
            guard shape.count == 2, shape[0] > 0, shape[1] > 0 else {
                throw ModelFormatError("expert \(name) matrix has shape \(shape); expected two positive dimensions")
            }
            let rows = shape[0], cols = shape[1]
            var scaleOffset: Int? = nil
            let dataLength: Int
            var ggmlType: GGMLType? = nil
            // q4 needs whole 32-weight blocks; other widths fall back to int8 (llama-quantize's rule).
            let matrixDType = dtype == .q4 && cols % Quantization.q4BlockSize != 0 ? ExpertDType.int8 : dtype
            switch matrixDType {
            case .bf16: dataLength = rows * cols * 2
            case .f32: dataLength = rows * cols * 4
            case .int8:
                scaleOffset = cursor
                cursor = Self.align(cursor + Quantization.int8ScaleBytes(rows: rows))
                dataLength = rows * cols
            case .q4:
                scaleOffset = cursor
                cursor = Self.align(cursor + Quantization.q4ScaleBytes(rows: rows, cols: cols))
                dataLength = Quantization.q4BlockBytes(rows: rows, cols: cols)
            case .mxfp4:
                guard cols % MXFP4.blockSize == 0 else {
                    throw ModelFormatError("mxfp4 needs the input width of every expert matrix to be a multiple of \(MXFP4.blockSize); the \(name) matrix is \(rows)x\(cols) (use --experts bf16)")
                }
                dataLength = MXFP4.byteCount(rows: rows, cols: cols)
            case .ggml:
                guard let types = ggmlTypes, types.count == 3 else {
                    throw ModelFormatError("a ggml expert layout needs the gate, up and down ggml types")
                }
                let type = types[index]
                guard type.isComputable || type == .mxfp4, let length = type.byteCount(elements: rows * cols), cols % type.blockSize == 0 else {
                    throw ModelFormatError("expert \(name) matrix \(rows)x\(cols) cannot be stored as ggml type \(type)")
                }
                ggmlType = type
                dataLength = length
            }
            let matrix = Matrix(rows: rows, cols: cols, dataOffset: cursor, dataLength: dataLength, scaleOffset: scaleOffset,
                                dtype: matrixDType, ggmlType: ggmlType)
            cursor = Self.align(cursor + dataLength)
            return matrix
        }
        gate = try place(gateShape, "gate", 0)
        up = try place(upShape, "up", 1)
        down = try place(downShape, "down", 2)
        if biases {
            let gateOffset = cursor
            cursor = Self.align(cursor + gate.rows * 4)
            let upOffset = cursor
            cursor = Self.align(cursor + up.rows * 4)
            let downOffset = cursor
            cursor = Self.align(cursor + down.rows * 4)
            biasOffsets = (gateOffset, upOffset, downOffset)
        } else {
            biasOffsets = nil
        }
        rawLength = cursor
    }

    /// The biases viewing `base` (a buffer holding a decoded blob), nil without biases.
    public func biases(at base: UnsafeRawPointer, owner: AnyObject) -> ExpertBiases? {
        guard let offsets = biasOffsets else { return nil }
        func view(_ offset: Int) -> UnsafePointer<Float> { (base + offset).assumingMemoryBound(to: Float.self) }
        return ExpertBiases(gate: view(offsets.gate), up: view(offsets.up), down: view(offsets.down),
                            width: gate.rows, hidden: down.rows, owner: owner)
    }

    /// Copies `biases` into their places in the blob at `base`.
    public func encode(biases: ExpertBiases, into base: UnsafeMutableRawPointer) {
        guard let offsets = biasOffsets else { preconditionFailure("this layout has no biases") }
        (base + offsets.gate).copyMemory(from: biases.gate, byteCount: gate.rows * 4)
        (base + offsets.up).copyMemory(from: biases.up, byteCount: up.rows * 4)
        (base + offsets.down).copyMemory(from: biases.down, byteCount: down.rows * 4)
    }

    /// `value` rounded up to the array alignment.
    static func align(_ value: Int) -> Int { (value + arrayAlignment - 1) / arrayAlignment * arrayAlignment }

    /// The three matrices viewing `base` (a buffer holding a decoded blob); `owner` keeps it alive.
    public func matrices(at base: UnsafeRawPointer, owner: AnyObject) -> (gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix) {
        func view(_ m: Matrix) -> WeightMatrix {
            let data = base + m.dataOffset
            let storage: WeightStorage
            switch m.dtype {
            case .ggml: storage = Self.storage(ggml: m.ggmlType!, at: data)
            case .bf16: storage = .bf16(data.assumingMemoryBound(to: UInt16.self))
            case .f32: storage = .f32(data.assumingMemoryBound(to: Float.self))
            case .int8: storage = .int8(values: data.assumingMemoryBound(to: Int8.self),
                                        scales: (base + m.scaleOffset!).assumingMemoryBound(to: Float.self))
            case .q4: storage = .q4(blocks: data.assumingMemoryBound(to: UInt8.self),
                                    scales: (base + m.scaleOffset!).assumingMemoryBound(to: Float.self))
            case .mxfp4: storage = .mxfp4(blocks: data.assumingMemoryBound(to: UInt8.self))
            }
            return WeightMatrix(rows: m.rows, cols: m.cols, storage: storage, owner: owner)
        }
        return (view(gate), view(up), view(down))
    }

    /// The storage of a matrix of ggml `type` at `data`: F32 and BF16 as plain elements,
    /// MXFP4 as the `mxfp4` kernel's blocks (the same bytes), block types as `ggml`.
    public static func storage(ggml type: GGMLType, at data: UnsafeRawPointer) -> WeightStorage {
        switch type {
        case .f32: return .f32(data.assumingMemoryBound(to: Float.self))
        case .bf16: return .bf16(data.assumingMemoryBound(to: UInt16.self))
        // MXFP4 from a GGUF file stays `.ggml(.mxfp4)`, as `GGUFModel` serves it, so that a packed
        // store computes bit for bit what the file computes (the `.mxfp4` storage has other kernels).
        default: return .ggml(type: type, blocks: data.assumingMemoryBound(to: UInt8.self))
        }
    }

    /// Encodes one float32 matrix `values[rows, cols]` into its place in the blob at `base`.
    public func encode(_ which: KeyPath<ExpertBlobLayout, Matrix>, from values: UnsafePointer<Float>, into base: UnsafeMutableRawPointer) {
        let m = self[keyPath: which]
        let count = m.rows * m.cols
        let data = base + m.dataOffset
        switch m.dtype {
        case .ggml:
            // ggml blocks are copied from a GGUF file, never encoded here (`pack FILE.gguf`).
            preconditionFailure("ggml expert matrices are copied bit for bit, not encoded from float32")
        case .f32:
            data.copyMemory(from: values, byteCount: count * 4)
        case .bf16:
            let out = data.assumingMemoryBound(to: UInt16.self)
            for i in 0..<count { out[i] = FloatConversion.bf16(from: values[i]) }
        case .int8:
            Quantization.quantizeInt8(values, rows: m.rows, cols: m.cols, values: data.assumingMemoryBound(to: Int8.self),
                                      scales: (base + m.scaleOffset!).assumingMemoryBound(to: Float.self))
        case .q4:
            Quantization.quantizeQ4(values, rows: m.rows, cols: m.cols, blocks: data.assumingMemoryBound(to: UInt8.self),
                                    scales: (base + m.scaleOffset!).assumingMemoryBound(to: Float.self))
        case .mxfp4:
            MXFP4.quantize(values, rows: m.rows, cols: m.cols, into: data.assumingMemoryBound(to: UInt8.self))
        }
    }
}
