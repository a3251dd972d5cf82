/// A JSON value, the one representation every module uses (tokenizer files, chat-template data,
/// HTTP bodies and responses).
///
/// Object members are an array of pairs, not a dictionary, so key order survives a round trip
/// (responses keep OpenAI's field order; `tojson` in chat templates must keep a document's order)
/// and a parse is cheap. A repeated key is kept as it appears; lookups by key return its last
/// value, as JavaScript's `JSON.parse` does.
public enum JSON: Sendable, Equatable {
    case null
    case bool(Bool)
    /// Integers stay exact (token ids, counts, 64-bit seeds); JSON numbers without fraction or
    /// exponent that fit in `Int` land here, all others in `double`.
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSON])
    /// Members in document order, repeated keys included.
    case object([(String, JSON)])

    /// Structural equality; object members compare regardless of order (by each key's last value),
    /// numbers by value (`1 == 1.0`).
    public static func == (lhs: JSON, rhs: JSON) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.int(a), .int(b)): return a == b
        case let (.double(a), .double(b)): return a == b
        case let (.int(a), .double(b)), let (.double(b), .int(a)): return Double(a) == b
        case let (.string(a), .string(b)): return a == b
        case let (.array(a), .array(b)): return a == b
        case let (.object(a), .object(b)):
            return a.count == b.count && a.allSatisfy { key, value in b.last { $0.0 == key }?.1 == value }
        default: return false
        }
    }

    /// The member `key` of an object (the last one when a key repeats, as JavaScript does).
    public subscript(key: String) -> JSON? {
        guard case let .object(members) = self else { return nil }
        return members.last { $0.0 == key }?.1
    }

    /// The element at `index` of an array.
    public subscript(index: Int) -> JSON? {
        guard case let .array(items) = self, items.indices.contains(index) else { return nil }
        return items[index]
    }

    /// The string payload, if this is a string.
    public var stringValue: String? { if case let .string(s) = self { return s }; return nil }
    /// The integer payload; doubles with an integral value count too (`1.0`).
    public var intValue: Int? {
        switch self {
        case let .int(i): return i
        case let .double(d) where d.rounded() == d && abs(d) < 9e15: return Int(d)
        default: return nil
        }
    }
    /// Any number as a double.
    public var doubleValue: Double? {
        switch self {
        case let .int(i): return Double(i)
        case let .double(d): return d
        default: return nil
        }
    }
    /// The boolean payload, if this is a boolean.
    public var boolValue: Bool? { if case let .bool(b) = self { return b }; return nil }
    /// The elements, if this is an array.
    public var arrayValue: [JSON]? { if case let .array(a) = self { return a }; return nil }
    /// The members in document order, if this is an object.
    public var objectValue: [(String, JSON)]? { if case let .object(o) = self { return o }; return nil }
    /// Whether this is `null`.
    public var isNull: Bool { if case .null = self { return true }; return false }
}
