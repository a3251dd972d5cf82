import Foundation

/// The `normalizer` section of `tokenizer.json`: `NFC`, `NFKC`, `Prepend`, `Replace` (string patterns),
/// `Lowercase`, `Strip` and `Sequence`.
indirect enum Normalizer: Sendable {
    case nfc
    case nfkc
    case prepend(String)
    case replace(pattern: String, content: String)
    case lowercase
    case strip(left: Bool, right: Bool)
    case sequence([Normalizer])

    static func parse(_ json: JSONObject) throws -> Normalizer {
        switch try json.type() {
        case "NFC": return .nfc
        case "NFKC": return .nfkc
        case "Prepend": return .prepend(try json.string("prepend"))
        case "Replace":
            return .replace(pattern: try stringPattern(json), content: try json.string("content"))
        case "Lowercase": return .lowercase
        case "Strip":
            return .strip(left: json.bool("strip_left", default: true), right: json.bool("strip_right", default: true))
        case "Sequence":
            let items = try json.array("normalizers")
            return .sequence(try items.enumerated().map {
                try parse(JSONObject($1, file: json.file, path: "\(json.path).normalizers[\($0)]"))
            })
        case let other:
            throw TokenizerError(file: json.file, "unsupported normalizer \"\(other)\" at \(json.path)")
        }
    }

    /// The `pattern` of a `Replace`/`Split`: only `{"String": ...}` is accepted here.
    static func stringPattern(_ json: JSONObject) throws -> String {
        let pattern = try json.object("pattern")
        if let s = pattern.optionalString("String") { return s }
        if let r = pattern.optionalString("Regex") {
            throw TokenizerError(file: json.file, "unsupported regex pattern \(r.debugDescription) at \(json.path)")
        }
        throw json.unsupported("pattern")
    }

    /// Normalizes `text`.
    func apply(_ text: String) -> String {
        switch self {
        case .nfc:
            if Self.isStableUnderNormalization(text) { return text }
            return text.precomposedStringWithCanonicalMapping
        case .nfkc:
            if Self.isStableUnderNormalization(text) { return text }
            return text.precomposedStringWithCompatibilityMapping
        case .prepend(let p):
            return text.isEmpty ? text : p + text
        case .replace(let pattern, let content):
            guard !pattern.isEmpty else { return text }
            return Self.replaceAll(text, pattern, content)
        case .lowercase:
            return text.lowercased()
        case .strip(let left, let right):
            var scalars = Substring(text).unicodeScalars[...]
            if left { while let f = scalars.first, f.properties.isWhitespace { scalars.removeFirst() } }
            if right { while let l = scalars.last, l.properties.isWhitespace { scalars.removeLast() } }
            return String(String.UnicodeScalarView(scalars))
        case .sequence(let items):
            var t = text
            for n in items { t = n.apply(t) }
            return t
        }
    }

    /// Normalizes a run of scalars. NFC and NFKC are applied chunk by chunk: text splits before every
    /// ASCII character without changing its normalization (an ASCII character is a starter that never
    /// composes with what precedes it), so only the chunks holding non-ASCII characters go through
    /// Foundation.
    func apply(_ scalars: ArraySlice<Unicode.Scalar>) -> [Unicode.Scalar] {
        func string(_ x: ArraySlice<Unicode.Scalar>) -> String {
            var s = ""
            s.unicodeScalars.append(contentsOf: x)
            return s
        }
        switch self {
        case .nfc, .nfkc:
            let limit: UInt32 = { if case .nfc = self { return 0x300 } else { return 0xA0 } }()
            var out: [Unicode.Scalar] = []
            out.reserveCapacity(scalars.count)
            var i = scalars.startIndex
            while i < scalars.endIndex {
                // A chunk: one scalar, then everything up to the next ASCII scalar.
                var e = i + 1
                var needsWork = scalars[i].value >= limit
                while e < scalars.endIndex && scalars[e].value >= 0x80 {
                    if scalars[e].value >= limit { needsWork = true }
                    e += 1
                }
                if needsWork {
                    out.append(contentsOf: apply(string(scalars[i..<e])).unicodeScalars)
                } else {
                    out.append(contentsOf: scalars[i..<e])
                }
                i = e
            }
            return out
        case .sequence(let items):
            var current = Array(scalars)
            for n in items { current = n.apply(current[...]) }
            return current
        case .prepend(let p):
            return scalars.isEmpty ? [] : Array(p.unicodeScalars) + scalars
        case .replace(let pattern, let content):
            return Self.replaceAll(scalars, Array(pattern.unicodeScalars), Array(content.unicodeScalars))
        default:
            return Array(apply(string(scalars)).unicodeScalars)
        }
    }

    /// Text made only of code points below U+0300 is unchanged by NFC and (for ASCII) NFKC.
    private static func isStableUnderNormalization(_ text: String) -> Bool {
        for b in text.utf8 where b >= 0x80 { return false }
        return true
    }

    /// Replaces every non-overlapping occurrence of `pattern` (matched on Unicode scalars, as Rust does).
    static func replaceAll(_ text: String, _ pattern: String, _ content: String) -> String {
        let out = replaceAll(Array(text.unicodeScalars)[...], Array(pattern.unicodeScalars), Array(content.unicodeScalars))
        var s = ""
        s.unicodeScalars.reserveCapacity(out.count)
        for u in out { s.unicodeScalars.append(u) }
        return s
    }

    static func replaceAll(
        _ text: ArraySlice<Unicode.Scalar>, _ p: [Unicode.Scalar], _ c: [Unicode.Scalar]
    ) -> [Unicode.Scalar] {
        let t = Array(text)
        guard !p.isEmpty, p.count <= t.count else { return t }
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(t.count)
        var i = 0
        while i < t.count {
            if t[i] == p[0] && i + p.count <= t.count {
                var ok = true
                for k in 1..<p.count where t[i + k] != p[k] { ok = false; break }
                if ok {
                    out.append(contentsOf: c)
                    i += p.count
                    continue
                }
            }
            out.append(t[i])
            i += 1
        }
        return out
    }
}
