import JSONCoding

/// Converts a JSON Schema into GBNF text whose sentences are exactly JSON documents that validate
/// against it (for the keywords below), so that constrained decoding can only produce valid output.
///
/// Supported: `type` (one or a list: object, array, string, integer, number, boolean, null),
/// `properties`, `required`, `additionalProperties` (false, true or a schema), `items`, `prefixItems`,
/// `minItems`, `maxItems`, `minLength`, `maxLength`, `enum`, `const`, `anyOf`, `oneOf`, `allOf` of
/// one schema, `$ref` to `#/$defs/...` or `#/definitions/...`, and the empty schema (any JSON value).
/// Annotations (`title`, `description`, `default`, `examples`, `$schema`, `$id`, `$comment`, `strict`)
/// are ignored. Any other keyword is a constraint this converter cannot enforce, so it is refused
/// (`GrammarError` naming the keyword and where it is), never silently dropped.
///
/// Properties come out in the schema's order; optional ones may be left out. Between tokens at most
/// one space (`ws`), so a model cannot pad forever.
public struct JSONSchemaGrammar {
    private var rules: [(String, String)] = []
    private var names: Set<String> = []
    private var refs: [String: String] = [:]
    private var root: JSON

    /// Keywords that describe but do not constrain.
    static let annotations: Set<String> = ["title", "description", "default", "examples", "$schema", "$id", "$comment",
                                           "strict", "name", "deprecated", "readOnly", "writeOnly", "$defs", "definitions"]

    /// The shared rules every schema grammar may use.
    static let primitives: [(String, String)] = [
        // One optional space: compact JSON, and no room for a model to pad with indentation.
        ("ws", #"| " ""#),
        // `\u` escapes exclude surrogates (strict parsers refuse unpaired ones; characters can
        // always be written directly as UTF-8 instead).
        ("char", #"[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" ([0-9a-cA-CefEF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}))"#),
        ("string", #""\"" char* "\"""#),
        ("integer", #"("-"? ([0-9] | [1-9] [0-9]{0,15}))"#),
        ("number", #"("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,4})?"#),
        ("boolean", #""true" | "false""#),
        ("null", #""null""#),
        ("value", #"object | array | string | number | boolean | null"#),
        ("object", #""{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* ws )? "}""#),
        ("array", #""[" ws ( value ( ws "," ws value )* ws )? "]""#),
    ]

    /// GBNF for any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    public static var anyObjectGBNF: String {
        (["root ::= object"] + primitives.map { "\($0.0) ::= \($0.1)" }).joined(separator: "\n")
    }

    /// GBNF for `schema`; throws `GrammarError` for keywords it cannot enforce.
    public static func gbnf(for schema: JSON) throws -> String {
        try gbnf(alternatives: [(before: "", schema: schema, after: "")])
    }

    /// GBNF whose sentences are `before` + a JSON document valid against `schema` + `after`, for
    /// any of the alternatives (a forced tool call: one alternative per offered function).
    public static func gbnf(alternatives: [(before: String, schema: JSON, after: String)]) throws -> String {
        var converter = JSONSchemaGrammar(root: .null)
        for (name, _) in primitives { converter.names.insert(name) }
        var tops: [String] = []
        for (i, part) in alternatives.enumerated() {
            converter.root = part.schema
            converter.refs = [:]
            let value = try converter.rule(for: part.schema, path: alternatives.count > 1 ? "$[\(i)]" : "$",
                                           hint: alternatives.count > 1 ? "alt\(i)" : "root-value")
            tops.append([part.before.isEmpty ? nil : literal(part.before), value, part.after.isEmpty ? nil : literal(part.after)]
                .compactMap { $0 }.joined(separator: " "))
        }
        var lines = ["root ::= " + tops.joined(separator: " | ")]
        lines += converter.rules.map { "\($0.0) ::= \($0.1)" }
        lines += primitives.map { "\($0.0) ::= \($0.1)" }
        return lines.joined(separator: "\n")
    }

    private init(root: JSON) { self.root = root }

    /// A GBNF string literal for `text`.
    public static func literal(_ text: String) -> String {
        var out = "\""
        for u in text.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 || u.value == 0x7F {
                    out += "\\x" + String(u.value, radix: 16).leftPadded(2)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    private mutating func define(_ hint: String, _ body: String) -> String {
        var base = hint.map { $0.isASCII && ($0.isLetter || $0.isNumber) ? String($0) : "-" }.joined().lowercased()
        if base.isEmpty || !(base.first!.isASCII && base.first!.isLetter) { base = "r-" + base }
        var name = base
        var k = 1
        while names.contains(name) { k += 1; name = "\(base)-\(k)" }
        names.insert(name)
        rules.append((name, body))
        return name
    }

    private func unsupported(_ keyword: String, _ path: String) -> GrammarError {
        GrammarError("json schema: keyword '\(keyword)' at \(path) is not supported (it would not be enforced)")
    }

    /// An expression (a rule name or a parenthesised alternative) matching `schema`.
    private mutating func rule(for schema: JSON, path: String, hint: String) throws -> String {
        if let b = schema.boolValue {
            guard b else { throw GrammarError("json schema: 'false' at \(path) matches nothing") }
            return "value"
        }
        guard let members = schema.objectValue else { throw GrammarError("json schema: \(path) must be an object or a boolean") }
        let known: Set<String> = ["type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
                                  "maxItems", "minLength", "maxLength", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"]
        for (key, _) in members where !known.contains(key) && !Self.annotations.contains(key) {
            throw unsupported(key, path)
        }
        if let ref = schema["$ref"]?.stringValue {
            guard members.count(where: { !Self.annotations.contains($0.0) }) == 1 else {
                throw GrammarError("json schema: '$ref' at \(path) with sibling constraints is not supported")
            }
            return try reference(ref, path: path)
        }
        if let c = schema["const"] { return Self.literal(c.serialized()) }
        if let e = schema["enum"] {
            guard let items = e.arrayValue, !items.isEmpty else { throw GrammarError("json schema: 'enum' at \(path) must be a non-empty array") }
            return "(" + items.map { Self.literal($0.serialized()) }.joined(separator: " | ") + ")"
        }
        for key in ["anyOf", "oneOf"] {
            guard let options = schema[key] else { continue }
            guard let items = options.arrayValue, !items.isEmpty else { throw GrammarError("json schema: '\(key)' at \(path) must be a non-empty array") }
            let alternatives = try items.enumerated().map { try rule(for: $1, path: "\(path).\(key)[\($0)]", hint: "\(hint)-\($0)") }
            return "(" + alternatives.joined(separator: " | ") + ")"
        }
        if let all = schema["allOf"] {
            guard let items = all.arrayValue, items.count == 1 else {
                throw GrammarError("json schema: 'allOf' at \(path) is supported with exactly one schema")
            }
            return try rule(for: items[0], path: "\(path).allOf[0]", hint: hint)
        }
        var types: [String] = []
        if let t = schema["type"] {
            if let s = t.stringValue { types = [s] } else if let list = t.arrayValue {
                types = try list.map {
                    guard let s = $0.stringValue else { throw GrammarError("json schema: 'type' at \(path) must be a string or strings") }
                    return s
                }
            } else { throw GrammarError("json schema: 'type' at \(path) must be a string or strings") }
        } else if schema["properties"] != nil {
            types = ["object"]
        } else if schema["items"] != nil || schema["prefixItems"] != nil {
            types = ["array"]
        } else {
            return "value"
        }
        let alternatives = try types.map { try typed($0, schema, path: path, hint: hint) }
        return alternatives.count == 1 ? alternatives[0] : "(" + alternatives.joined(separator: " | ") + ")"
    }

    private mutating func reference(_ ref: String, path: String) throws -> String {
        if let name = refs[ref] { return name }
        let parts = ref.split(separator: "/").map(String.init)
        guard parts.count == 3, parts[0] == "#", parts[1] == "$defs" || parts[1] == "definitions",
              let target = root[parts[1]]?[parts[2]] else {
            throw GrammarError("json schema: '$ref' \(ref) at \(path) does not name a local definition (#/$defs/NAME)")
        }
        // Named first, so a recursive schema refers to the rule being defined.
        let name = define("ref-\(parts[2])", "")
        refs[ref] = name
        let body = try rule(for: target, path: ref, hint: "\(parts[2])-body")
        if let index = rules.firstIndex(where: { $0.0 == name }) { rules[index].1 = body }
        return name
    }

    private mutating func typed(_ type: String, _ schema: JSON, path: String, hint: String) throws -> String {
        func only(_ allowed: Set<String>) throws {
            for key in ["properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems", "minLength", "maxLength"]
            where schema[key] != nil && !allowed.contains(key) {
                throw GrammarError("json schema: '\(key)' at \(path) does not apply to type '\(type)'")
            }
        }
        switch type {
        case "string":
            let minLength = try count("minLength", schema, path) ?? 0
            let maxLength = try count("maxLength", schema, path)
            if minLength == 0 && maxLength == nil { return "string" }
            if let maxLength, maxLength < minLength { throw GrammarError("json schema: maxLength < minLength at \(path)") }
            let bound = maxLength.map { "{\(minLength),\($0)}" } ?? "{\(minLength),}"
            return define(hint, "\"\\\"\" char\(bound) \"\\\"\"")
        case "integer": return "integer"
        case "number": return "number"
        case "boolean": return "boolean"
        case "null": return "null"
        case "array":
            let minItems = try count("minItems", schema, path) ?? 0
            let maxItems = try count("maxItems", schema, path)
            if let maxItems, maxItems < minItems { throw GrammarError("json schema: maxItems < minItems at \(path)") }
            if let prefix = schema["prefixItems"] {
                guard let items = prefix.arrayValue else { throw GrammarError("json schema: 'prefixItems' at \(path) must be an array") }
                guard schema["items"]?.boolValue == false || schema["items"] == nil else {
                    throw GrammarError("json schema: 'items' beside 'prefixItems' at \(path) is supported only as false")
                }
                let parts = try items.enumerated().map { try rule(for: $1, path: "\(path).prefixItems[\($0)]", hint: "\(hint)-\($0)") }
                return define(hint, "\"[\" ws " + parts.joined(separator: " ws \",\" ws ") + " ws \"]\"")
            }
            let item = try schema["items"].map { try rule(for: $0, path: "\(path).items", hint: "\(hint)-item") } ?? "value"
            let body: String
            switch (minItems, maxItems) {
            case (0, nil): body = "\"[\" ws ( \(item) ( ws \",\" ws \(item) )* ws )? \"]\""
            case (0, 0): body = "\"[\" ws \"]\""
            case (0, let m?): body = "\"[\" ws ( \(item) ( ws \",\" ws \(item) ){0,\(m - 1)} ws )? \"]\""
            case (let n, nil): body = "\"[\" ws \(item) ( ws \",\" ws \(item) ){\(n - 1),} ws \"]\""
            case (let n, let m?): body = "\"[\" ws \(item) ( ws \",\" ws \(item) ){\(n - 1),\(m - 1)} ws \"]\""
            }
            return define(hint, body)
        case "object":
            try only(["properties", "required", "additionalProperties"])
            let properties = schema["properties"]?.objectValue ?? []
            if schema["properties"] != nil && schema["properties"]?.objectValue == nil {
                throw GrammarError("json schema: 'properties' at \(path) must be an object")
            }
            var required = Set<String>()
            if let r = schema["required"] {
                guard let list = r.arrayValue?.compactMap(\.stringValue), list.count == r.arrayValue?.count else {
                    throw GrammarError("json schema: 'required' at \(path) must be an array of strings")
                }
                required = Set(list)
                for name in list where !properties.contains(where: { $0.0 == name }) {
                    // A required property the schema does not describe: any value.
                    _ = name
                }
            }
            let additional = schema["additionalProperties"]
            if properties.isEmpty {
                if additional?.boolValue == false { return define(hint, "\"{\" ws \"}\"") }
                if let additional, additional.boolValue == nil {
                    let v = try rule(for: additional, path: "\(path).additionalProperties", hint: "\(hint)-additional")
                    return define(hint, "\"{\" ws ( string ws \":\" ws \(v) ( ws \",\" ws string ws \":\" ws \(v) )* ws )? \"}\"")
                }
                return "object"
            }
            // Required properties the schema names but does not describe come first as any value.
            var ordered = properties
            for name in required.sorted() where !properties.contains(where: { $0.0 == name }) { ordered.append((name, .bool(true))) }
            // kv_i for each property, then A_i (nothing emitted yet) / B_i (a comma needed) chains.
            var kv: [String] = []
            for (i, (name, sub)) in ordered.enumerated() {
                let v = try rule(for: sub, path: "\(path).properties.\(name)", hint: "\(hint)-\(name)")
                kv.append(define("\(hint)-\(name)-kv", "\(Self.literal(JSON.string(name).serialized())) ws \":\" ws \(v)"))
                _ = i
            }
            var a = "", b = ""  // the rule names for suffix i+1 (empty: ε)
            for i in stride(from: ordered.count - 1, through: 0, by: -1) {
                let isRequired = required.contains(ordered[i].0)
                let bNext = b.isEmpty ? "" : " \(b)"
                let aBody = "\(kv[i])\(bNext)" + (isRequired ? "" : (a.isEmpty ? " | " : " | \(a)"))
                let bBody = "ws \",\" ws \(kv[i])\(bNext)" + (isRequired ? "" : (b.isEmpty ? " | " : " | \(b)"))
                a = define("\(hint)-a\(i)", aBody)
                b = define("\(hint)-b\(i)", bBody)
            }
            return define(hint, "\"{\" ws \(a) ws \"}\"")
        default:
            throw GrammarError("json schema: unknown type '\(type)' at \(path)")
        }
    }

    private func count(_ key: String, _ schema: JSON, _ path: String) throws -> Int? {
        guard let v = schema[key] else { return nil }
        guard let n = v.intValue, n >= 0, n <= 10_000 else { throw GrammarError("json schema: '\(key)' at \(path) must be an integer in 0...10000") }
        return n
    }
}

extension String {
    fileprivate func leftPadded(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}
