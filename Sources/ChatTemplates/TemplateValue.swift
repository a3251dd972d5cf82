import Foundation
import JSONCoding

/// A value inside a chat template: what Jinja sees of Python's `None`, bools, numbers, strings, lists
/// and dicts (dicts keep their key order, as `tojson` must).
public enum TemplateValue: Sendable {
    /// Jinja's `Undefined` (a missing variable, key or attribute).
    case undefined
    /// Python's `None`.
    case none
    /// A boolean.
    case bool(Bool)
    /// An integer.
    case int(Int)
    /// A float.
    case double(Double)
    /// A string.
    case string(String)
    /// A list.
    case array([TemplateValue])
    /// A dict, keys in insertion order.
    case object(TemplateDictionary)
    /// A `namespace(...)` object: mutable through `{% set ns.attr = ... %}`.
    case namespace(TemplateNamespace)
    /// A built-in function (`raise_exception`, `namespace`, `range`, `strftime_now`) or a macro.
    case function(TemplateFunction)

    /// Converts JSON (`Data` holding one JSON value) into a template value, keeping object key order.
    public static func fromJSON(_ data: Data) throws -> TemplateValue {
        do {
            return TemplateValue(json: try JSON.parse([UInt8](data), options: .lenient))
        } catch let error as JSONParseError {
            throw TokenizerError(error.description)
        }
    }

    init(json: JSON) {
        switch json {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(i)
        case .double(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .array(a.map(TemplateValue.init(json:)))
        case .object(let o): self = .object(TemplateDictionary(o.map { ($0, TemplateValue(json: $1)) }))
        }
    }

    /// Python truthiness.
    var isTruthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .array(let a): return !a.isEmpty
        case .object(let o): return o.count > 0
        case .namespace, .function: return true
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true } else { return false } }

    /// Python `str()` (what `{{ value }}` prints); undefined prints as the empty string.
    var pythonString: String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return pythonRepr
        }
    }

    /// Python `repr()`.
    var pythonRepr: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return Self.pythonFloat(d)
        case .string(let s): return Self.pythonStringRepr(s)
        case .array(let a): return "[" + a.map(\.pythonRepr).joined(separator: ", ") + "]"
        case .object(let o):
            return "{" + o.pairs.map { Self.pythonStringRepr($0.0) + ": " + $0.1.pythonRepr }.joined(separator: ", ") + "}"
        case .namespace: return "<Namespace>"
        case .function(let f): return "<function \(f.name)>"
        }
    }

    static func pythonFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d > 0 ? "inf" : "-inf" }
        var s = "\(d)"
        if s.hasSuffix(".0") == false, !s.contains("."), !s.contains("e") { s += ".0" }
        return s
    }

    static func pythonStringRepr(_ s: String) -> String {
        let quote: Character = (s.contains("'") && !s.contains("\"")) ? "\"" : "'"
        var out = String(quote)
        for u in s.unicodeScalars {
            switch u {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if Character(u) == quote { out += "\\" + String(quote) }
                else if u.value < 0x20 || u.value == 0x7F { out += String(format: "\\x%02x", u.value) }
                else { out.unicodeScalars.append(u) }
            }
        }
        out.append(quote)
        return out
    }

    /// Python `json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sortKeys)`
    /// (transformers' `tojson` filter).
    /// `separators` as Python's `(item, key)` pair; nil for its default.
    func toJSON(indent: Int?, sortKeys: Bool = false, separators: (String, String)? = nil, level: Int = 0) throws -> String {
        let nl = indent.map { "\n" + String(repeating: " ", count: $0 * (level + 1)) }
        let close = indent.map { "\n" + String(repeating: " ", count: $0 * level) }
        let itemSep = separators?.0 ?? (indent == nil ? ", " : ",")
        let keySep = separators?.1 ?? ": "
        switch self {
        case .none: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d):
            if d.isNaN { return "NaN" }
            if d.isInfinite { return d > 0 ? "Infinity" : "-Infinity" }
            return Self.pythonFloat(d)
        case .string(let s): return JSON.quoted(s, escaping: .minimal)
        case .array(let a):
            if a.isEmpty { return "[]" }
            let items = try a.map { try $0.toJSON(indent: indent, sortKeys: sortKeys, separators: separators, level: level + 1) }
            if let nl, let close { return "[" + nl + items.joined(separator: itemSep + nl) + close + "]" }
            return "[" + items.joined(separator: itemSep) + "]"
        case .object(let o):
            if o.count == 0 { return "{}" }
            var pairs = Array(o.pairs)
            if sortKeys { pairs.sort { $0.0 < $1.0 } }
            let items = try pairs.map {
                JSON.quoted($0.0, escaping: .minimal) + keySep
                    + (try $0.1.toJSON(indent: indent, sortKeys: sortKeys, separators: separators, level: level + 1))
            }
            if let nl, let close { return "{" + nl + items.joined(separator: itemSep + nl) + close + "}" }
            return "{" + items.joined(separator: itemSep) + "}"
        case .undefined:
            throw TokenizerError(file: "chat_template", "tojson of an undefined value")
        case .namespace, .function:
            throw TokenizerError(file: "chat_template", "tojson of a \(typeName) is not serializable")
        }
    }

    /// Python's `ensure_ascii=True` applied to `json`: every non-ASCII scalar (only ever inside strings)
    /// as `\\uXXXX`, lowercase hex, astral ones as a surrogate pair.
    static func asciiEscaped(_ json: String) -> String {
        var out = ""
        out.reserveCapacity(json.utf8.count)
        for u in json.unicodeScalars {
            if u.value < 0x80 { out.unicodeScalars.append(u); continue }
            for unit in String(u).utf16 { out += "\\u" + String(repeating: "0", count: 4 - String(unit, radix: 16).count) + String(unit, radix: 16) }
        }
        return out
    }

    var typeName: String {
        switch self {
        case .undefined: return "undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .array: return "list"
        case .object: return "dict"
        case .namespace: return "Namespace"
        case .function: return "function"
        }
    }

    /// Python `==`.
    func pythonEquals(_ other: TemplateValue) -> Bool {
        switch (self, other) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.bool(let a), .bool(let b)): return a == b
        case (.int, .int), (.int, .double), (.double, .int), (.double, .double),
             (.bool, .int), (.int, .bool), (.bool, .double), (.double, .bool):
            return numeric! == other.numeric!
        case (.string(let a), .string(let b)): return Array(a.unicodeScalars) == Array(b.unicodeScalars)
        case (.array(let a), .array(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.pythonEquals($1) }
        case (.object(let a), .object(let b)):
            return a.count == b.count && a.pairs.allSatisfy { k, v in b[k].map { v.pythonEquals($0) } ?? false }
        case (.namespace(let a), .namespace(let b)): return a === b
        default: return false
        }
    }

    var numeric: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }
}

/// Literal syntax for template values, e.g. `["role": "user", "content": "Hi"]`.
extension TemplateValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByFloatLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    /// A string.
    public init(stringLiteral value: String) { self = .string(value) }
    /// An integer.
    public init(integerLiteral value: Int) { self = .int(value) }
    /// A boolean.
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    /// A float.
    public init(floatLiteral value: Double) { self = .double(value) }
    /// A list.
    public init(arrayLiteral elements: TemplateValue...) { self = .array(elements) }
    /// A dict, in the literal's key order.
    public init(dictionaryLiteral elements: (String, TemplateValue)...) { self = .object(TemplateDictionary(elements)) }
    /// `None`.
    public init(nilLiteral: ()) { self = .none }
}

/// An insertion-ordered string-keyed dictionary (a Python dict).
public struct TemplateDictionary: Sendable {
    /// The keys, in insertion order.
    public private(set) var keys: [String] = []
    /// The values, parallel to `keys`.
    public private(set) var values: [TemplateValue] = []

    /// An empty dict.
    public init() {}

    /// A dict of `pairs` (a repeated key keeps its first position and its last value).
    public init(_ pairs: [(String, TemplateValue)]) {
        for (k, v) in pairs { self[k] = v }
    }

    /// The number of entries.
    public var count: Int { keys.count }
    var pairs: [(String, TemplateValue)] { Array(zip(keys, values)) }

    /// The value for `key`; setting nil removes the entry.
    public subscript(key: String) -> TemplateValue? {
        get { keys.firstIndex(of: key).map { values[$0] } }
        set {
            if let i = keys.firstIndex(of: key) {
                if let newValue { values[i] = newValue } else { keys.remove(at: i); values.remove(at: i) }
            } else if let newValue {
                keys.append(key)
                values.append(newValue)
            }
        }
    }
}

/// The mutable object made by `namespace(...)`.
public final class TemplateNamespace: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: TemplateDictionary

    init(_ values: TemplateDictionary) { storage = values }

    subscript(key: String) -> TemplateValue? {
        get { lock.lock(); defer { lock.unlock() }; return storage[key] }
        set { lock.lock(); storage[key] = newValue; lock.unlock() }
    }
}

/// A callable value.
public struct TemplateFunction: Sendable {
    let name: String
    let call: @Sendable ([TemplateValue], [(String, TemplateValue)]) throws -> TemplateValue
}
