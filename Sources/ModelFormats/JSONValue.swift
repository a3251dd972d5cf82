import JSONCoding

/// A config.json value as the architecture files read it: objects as dictionaries, every number a
/// `Double`, booleans and numbers kept apart.
///
/// Only a view: parsing and serialising go through JSONCoding's `JSON` (the one JSON parser and
/// value model), whose conversions are below; `Codable` goes through `JSON`'s `Codable` too.
public enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// The view of `json`: a repeated key keeps its last value, integers become doubles.
    public init(_ json: JSON) {
        switch json {
        case .null: self = .null
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .number(Double(i))
        case .double(let d): self = .number(d)
        case .string(let s): self = .string(s)
        case .array(let items): self = .array(items.map(JSONValue.init))
        case .object(let members):
            self = .object(Dictionary(members.map { ($0.0, JSONValue($0.1)) }, uniquingKeysWith: { $1 }))
        }
    }

    /// Parses one JSON document with JSONCoding's parser (strict strings, nesting up to 512 levels).
    public static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        JSONValue(try JSON.parse(bytes, options: JSONParseOptions(maxDepth: 512)))
    }

    /// The value as JSONCoding's `JSON`: whole numbers below 1e15 as integers, object keys sorted.
    public var json: JSON {
        switch self {
        case .null: return .null
        case .bool(let b): return .bool(b)
        case .number(let d): return d == d.rounded() && abs(d) < 1e15 ? .int(Int(d)) : .double(d)
        case .string(let s): return .string(s)
        case .array(let items): return .array(items.map(\.json))
        case .object(let members): return .object(members.sorted { $0.key < $1.key }.map { ($0.key, $0.value.json) })
        }
    }

    public init(from decoder: any Decoder) throws {
        self.init(try JSON(from: decoder))
    }

    public func encode(to encoder: any Encoder) throws {
        try json.encode(to: encoder)
    }

    /// Member `key` of an object, nil otherwise.
    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    /// The value as an integer, if it is a whole number.
    public var intValue: Int? {
        if case .number(let value) = self, value == value.rounded(), abs(value) < 9e15 { return Int(value) }
        return nil
    }

    /// The value as a number.
    public var doubleValue: Double? {
        if case .number(let value) = self { return value }
        return nil
    }

    /// The value as a boolean.
    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    /// The value as a string.
    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// The elements of an array.
    public var arrayValue: [JSONValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    /// The members of an object.
    public var objectValue: [String: JSONValue]? {
        if case .object(let value) = self { return value }
        return nil
    }
}
