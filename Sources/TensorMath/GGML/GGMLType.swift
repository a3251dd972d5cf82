/// A ggml tensor element type, by its numeric id in GGUF files (`ggml_type`). Only the ids
/// are listed here; `isComputable` says which ones MoEServe can multiply.
///
/// Quantised types store a row as consecutive blocks of `blockSize` weights, each
/// `blockBytes` long; a row of `cols` weights is `cols / blockSize` blocks (`cols` must be a
/// multiple of `blockSize`).
public struct GGMLType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let f32 = GGMLType(rawValue: 0)
    public static let f16 = GGMLType(rawValue: 1)
    public static let q4_0 = GGMLType(rawValue: 2)
    public static let q4_1 = GGMLType(rawValue: 3)
    public static let q5_0 = GGMLType(rawValue: 6)
    public static let q5_1 = GGMLType(rawValue: 7)
    public static let q8_0 = GGMLType(rawValue: 8)
    public static let q8_1 = GGMLType(rawValue: 9)
    public static let q2_K = GGMLType(rawValue: 10)
    public static let q3_K = GGMLType(rawValue: 11)
    public static let q4_K = GGMLType(rawValue: 12)
    public static let q5_K = GGMLType(rawValue: 13)
    public static let q6_K = GGMLType(rawValue: 14)
    public static let q8_K = GGMLType(rawValue: 15)
    public static let iq2_XXS = GGMLType(rawValue: 16)
    public static let iq2_XS = GGMLType(rawValue: 17)
    public static let iq3_XXS = GGMLType(rawValue: 18)
    public static let iq1_S = GGMLType(rawValue: 19)
    public static let iq4_NL = GGMLType(rawValue: 20)
    public static let iq3_S = GGMLType(rawValue: 21)
    public static let iq2_S = GGMLType(rawValue: 22)
    public static let iq4_XS = GGMLType(rawValue: 23)
    public static let i8 = GGMLType(rawValue: 24)
    public static let i16 = GGMLType(rawValue: 25)
    public static let i32 = GGMLType(rawValue: 26)
    public static let i64 = GGMLType(rawValue: 27)
    public static let f64 = GGMLType(rawValue: 28)
    public static let iq1_M = GGMLType(rawValue: 29)
    public static let bf16 = GGMLType(rawValue: 30)
    public static let tq1_0 = GGMLType(rawValue: 34)
    public static let tq2_0 = GGMLType(rawValue: 35)
    public static let mxfp4 = GGMLType(rawValue: 39)

    /// Weights per K-quant super-block.
    public static let superBlock = 256

    /// (name, weights per block, bytes per block) of every type id a GGUF file may carry.
    private static let table: [UInt32: (String, Int, Int)] = [
        0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
        6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
        10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
        14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
        18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
        22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
        26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
        34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
    ]

    /// Whether the id names a type ggml defines (a file may still use a type we cannot compute).
    public var isKnown: Bool { Self.table[rawValue] != nil }

    /// ggml's name for the type (`Q4_K`), or `type N` for an unknown id.
    public var name: String { Self.table[rawValue]?.0 ?? "type \(rawValue)" }

    public var description: String { name }

    /// Weights per block (1 for the plain float types); 0 for an unknown id.
    public var blockSize: Int { Self.table[rawValue]?.1 ?? 0 }

    /// Bytes per block; 0 for an unknown id.
    public var blockBytes: Int { Self.table[rawValue]?.2 ?? 0 }

    /// The types whose blocks `GGMLDequantize` decodes and `GGMLKernels` multiply.
    public static let computable: [GGMLType] = [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1,
                                                 .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .iq4_NL, .iq4_XS, .mxfp4]

    /// Whether MoEServe can compute with this type.
    public var isComputable: Bool { Self.computable.contains(self) }

    /// Bytes of `count` weights (`count` a multiple of `blockSize`), nil on overflow or a
    /// count that is not a whole number of blocks.
    public func byteCount(elements count: Int) -> Int? {
        guard blockSize > 0, count >= 0, count % blockSize == 0 else { return nil }
        let (bytes, overflow) = (count / blockSize).multipliedReportingOverflow(by: blockBytes)
        return overflow ? nil : bytes
    }
}
