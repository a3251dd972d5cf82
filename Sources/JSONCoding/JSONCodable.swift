/// `JSON` as a `Codable` value, so that a document decoded or encoded through `Codable` (the expert
/// store's manifest, which embeds the checkpoint's config.json verbatim) carries a JSON subtree in
/// this module's representation.
///
/// Decoding keeps what a `Codable` decoder can tell apart: null, booleans, integers that fit in
/// `Int` (exact), other numbers as doubles, strings, arrays and objects. Objects go through a
/// dictionary, so decoded members come with their keys sorted (a stable order) and an encoded
/// object's order is the encoder's (a repeated key once, with its last value).
extension JSON: Codable {
    public init(from decoder: any Decoder) throws {
        // Objects decode as `[String: JSON]`: a decoder's key strategy (the manifest's
        // snake_case conversion) applies to coding keys, never to a dictionary's own keys.
        let value = try decoder.singleValueContainer()
        if value.decodeNil() { self = .null }
        else if let b = try? value.decode(Bool.self) { self = .bool(b) }
        else if let i = try? value.decode(Int.self) { self = .int(i) }
        else if let d = try? value.decode(Double.self) { self = .double(d) }
        else if let s = try? value.decode(String.self) { self = .string(s) }
        else if let items = try? value.decode([JSON].self) { self = .array(items) }
        else { self = .object(try value.decode([String: JSON].self).sorted { $0.key < $1.key }.map { ($0.key, $0.value) }) }
    }

    public func encode(to encoder: any Encoder) throws {
        var value = encoder.singleValueContainer()
        switch self {
        case .null: try value.encodeNil()
        case .bool(let b): try value.encode(b)
        case .int(let i): try value.encode(i)
        case .double(let d): try value.encode(d)
        case .string(let s): try value.encode(s)
        case .array(let items): try value.encode(items)
        case .object(let members): try value.encode(Dictionary(members, uniquingKeysWith: { $1 }))
        }
    }
}
