/// One metadata value of a GGUF file. Integers keep their sign class (the file's exact
/// width is in `GGUFValueType`, which the parser checks but does not keep), so a `u32` and a
/// `u64` read the same way.
public indirect enum GGUFValue: Sendable, Equatable, CustomStringConvertible {
    case unsigned(UInt64)
    case signed(Int64)
    case float(Double)
    case bool(Bool)
    case string(String)
    case array([GGUFValue])

    /// The value as an `Int` when it is an integer that fits.
    public var intValue: Int? {
        switch self {
        case .unsigned(let v): return Int(exactly: v)
        case .signed(let v): return Int(exactly: v)
        default: return nil
        }
    }

    /// The value as a `Double` when it is a number.
    public var doubleValue: Double? {
        switch self {
        case .float(let v): return v
        case .unsigned(let v): return Double(v)
        case .signed(let v): return Double(v)
        default: return nil
        }
    }

    /// The value as a `Bool` (also from integers 0 and 1).
    public var boolValue: Bool? {
        switch self {
        case .bool(let v): return v
        case .unsigned(let v) where v <= 1: return v == 1
        case .signed(let v) where v == 0 || v == 1: return v == 1
        default: return nil
        }
    }

    public var stringValue: String? { if case .string(let v) = self { return v } else { return nil } }
    public var arrayValue: [GGUFValue]? { if case .array(let v) = self { return v } else { return nil } }

    public var description: String {
        switch self {
        case .unsigned(let v): return "\(v)"
        case .signed(let v): return "\(v)"
        case .float(let v): return "\(v)"
        case .bool(let v): return "\(v)"
        case .string(let v): return v.count > 60 ? "\"\(v.prefix(57))...\"" : "\"\(v)\""
        case .array(let v): return "[\(v.count) values]"
        }
    }
}

/// The value type ids of GGUF metadata (`gguf_type`).
enum GGUFValueType: UInt32 {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7,
         string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12
}
