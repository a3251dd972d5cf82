/// Tokens of a Jinja template.
enum TemplateToken: Equatable {
    case text(String)
    case variableBegin, variableEnd, blockBegin, blockEnd
    case name(String)
    case string(String)
    case int(Int)
    case float(Double)
    case op(String)
    case eof
}

/// Splits a template into text and tag tokens the way Jinja's lexer does with the settings
/// `transformers` uses for chat templates: `trim_blocks=True`, `lstrip_blocks=True`,
/// `keep_trailing_newline=False`, `-`/`+` whitespace control.
struct TemplateLexer {
    private let s: [Unicode.Scalar]
    private var pos = 0
    private(set) var tokens: [TemplateToken] = []

    static func tokenize(_ source: String) throws -> [TemplateToken] {
        var lexer = TemplateLexer(source: source)
        try lexer.run()
        return lexer.tokens
    }

    private init(source: String) {
        // Newlines are normalized to "\n", and one trailing newline is dropped.
        var scalars: [Unicode.Scalar] = []
        scalars.reserveCapacity(source.unicodeScalars.count)
        var it = Array(source.unicodeScalars)[...]
        while let c = it.popFirst() {
            if c == "\r" {
                if it.first == "\n" { it.removeFirst() }
                scalars.append("\n")
            } else {
                scalars.append(c)
            }
        }
        if scalars.last == "\n" { scalars.removeLast() }
        s = scalars
    }

    private func error(_ message: String) -> TokenizerError {
        var line = 1
        for k in 0..<min(pos, s.count) where s[k] == "\n" { line += 1 }
        return TokenizerError(file: "chat_template", "line \(line): \(message)")
    }

    private func at(_ k: Int, _ c: Unicode.Scalar) -> Bool { k < s.count && s[k] == c }

    private static func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace }

    private mutating func run() throws {
        var lineStarting = true
        while pos < s.count {
            // Next tag opener.
            var k = pos
            var kind: Unicode.Scalar? = nil
            while k + 1 < s.count {
                if s[k] == "{", s[k + 1] == "{" || s[k + 1] == "%" || s[k + 1] == "#" { kind = s[k + 1]; break }
                k += 1
            }
            guard let kind else {
                emitText(Array(s[pos...]))
                pos = s.count
                break
            }
            var text = Array(s[pos..<k])
            let sign: Unicode.Scalar? = (at(k + 2, "-") || at(k + 2, "+")) ? s[k + 2] : nil
            if sign == "-" {
                while let last = text.last, Self.isSpace(last) { text.removeLast() }
            } else if sign != "+" && kind != "{" {
                // lstrip_blocks: drop spaces between the start of the line and a block or comment tag.
                let lpos = (text.lastIndex(of: "\n").map { $0 + 1 }) ?? 0
                if lpos > 0 || lineStarting {
                    let rest = text[lpos...]
                    if !rest.isEmpty && rest.allSatisfy(Self.isSpace) { text.removeSubrange(lpos...) }
                }
            }
            emitText(text)
            pos = k + 2 + (sign == nil ? 0 : 1)
            if kind == "#" {
                // Comment: skip to "#}".
                var e = pos
                while e + 1 < s.count && !(s[e] == "#" && s[e + 1] == "}") { e += 1 }
                guard e + 1 < s.count else { throw error("unterminated comment") }
                let minus = e > pos && s[e - 1] == "-"
                let plus = e > pos && s[e - 1] == "+"
                pos = e + 2
                lineStarting = trailingWhitespace(minus: minus, plus: plus, block: true)
                continue
            }
            let isBlock = kind == "%"
            if isBlock, try isRawBlock() { throw error("unsupported tag \"raw\"") }
            tokens.append(isBlock ? .blockBegin : .variableBegin)
            let closer: Unicode.Scalar = isBlock ? "%" : "}"
            var depth = 0
            while true {
                while pos < s.count && Self.isSpace(s[pos]) { pos += 1 }
                guard pos < s.count else { throw error("unterminated tag") }
                // End of tag (only outside brackets).
                if depth == 0 {
                    if s[pos] == "-" && at(pos + 1, closer) && at(pos + 2, "}") {
                        pos += 3
                        tokens.append(isBlock ? .blockEnd : .variableEnd)
                        lineStarting = trailingWhitespace(minus: true, plus: false, block: isBlock)
                        break
                    }
                    if isBlock && s[pos] == "+" && at(pos + 1, "%") && at(pos + 2, "}") {
                        pos += 3
                        tokens.append(.blockEnd)
                        lineStarting = false
                        break
                    }
                    if s[pos] == closer && at(pos + 1, "}") {
                        pos += 2
                        tokens.append(isBlock ? .blockEnd : .variableEnd)
                        lineStarting = trailingWhitespace(minus: false, plus: false, block: isBlock)
                        break
                    }
                }
                let t = try lexExpressionToken()
                if case .op(let o) = t {
                    if o == "(" || o == "[" || o == "{" { depth += 1 }
                    if o == ")" || o == "]" || o == "}" { depth -= 1 }
                }
                tokens.append(t)
            }
        }
        tokens.append(.eof)
    }

    private mutating func isRawBlock() throws -> Bool {
        var p = pos
        while p < s.count && Self.isSpace(s[p]) { p += 1 }
        let word = "raw".unicodeScalars
        var q = p
        for c in word { guard at(q, c) else { return false }; q += 1 }
        return q < s.count && !(s[q].properties.isAlphabetic || s[q] == "_")
    }

    /// Applies `-` (strip all following white space) or trim_blocks (drop one newline after a block).
    /// Returns whether the consumed text ended with a newline.
    private mutating func trailingWhitespace(minus: Bool, plus: Bool, block: Bool) -> Bool {
        if minus {
            var last: Unicode.Scalar? = nil
            while pos < s.count && Self.isSpace(s[pos]) { last = s[pos]; pos += 1 }
            return last == "\n"
        }
        if block && !plus && at(pos, "\n") {
            pos += 1
            return true
        }
        return false
    }

    private mutating func emitText(_ text: [Unicode.Scalar]) {
        guard !text.isEmpty else { return }
        var str = ""
        str.unicodeScalars.append(contentsOf: text)
        tokens.append(.text(str))
    }

    private static let operators: [String] = [
        "//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")", "[", "]", "{",
        "}", ",", ".", ":", "|",
    ]

    private mutating func lexExpressionToken() throws -> TemplateToken {
        let c = s[pos]
        if c.properties.isAlphabetic || c == "_" {
            var e = pos
            while e < s.count && (s[e].properties.isAlphabetic || s[e] == "_" || ("0"..."9").contains(s[e])) { e += 1 }
            var name = ""
            name.unicodeScalars.append(contentsOf: s[pos..<e])
            pos = e
            return .name(name)
        }
        if ("0"..."9").contains(c) {
            var e = pos
            var isFloat = false
            while e < s.count && (("0"..."9").contains(s[e]) || s[e] == "_") { e += 1 }
            if e + 1 < s.count && s[e] == "." && ("0"..."9").contains(s[e + 1]) {
                isFloat = true
                e += 1
                while e < s.count && ("0"..."9").contains(s[e]) { e += 1 }
            }
            if e < s.count && (s[e] == "e" || s[e] == "E") {
                var f = e + 1
                if f < s.count && (s[f] == "+" || s[f] == "-") { f += 1 }
                if f < s.count && ("0"..."9").contains(s[f]) {
                    isFloat = true
                    e = f
                    while e < s.count && ("0"..."9").contains(s[e]) { e += 1 }
                }
            }
            var text = ""
            text.unicodeScalars.append(contentsOf: s[pos..<e].filter { $0 != "_" })
            pos = e
            if isFloat { return .float(Double(text) ?? 0) }
            guard let i = Int(text) else { throw error("integer literal \(text) is too large") }
            return .int(i)
        }
        if c == "'" || c == "\"" {
            return .string(try lexString(quote: c))
        }
        for o in Self.operators {
            let scalars = Array(o.unicodeScalars)
            if pos + scalars.count <= s.count && Array(s[pos..<(pos + scalars.count)]) == scalars {
                pos += scalars.count
                return .op(o)
            }
        }
        throw error("unexpected character \(String(c).debugDescription) in a tag")
    }

    /// A string literal, with Python escape sequences.
    private mutating func lexString(quote: Unicode.Scalar) throws -> String {
        pos += 1
        var out = String.UnicodeScalarView()
        while pos < s.count {
            let c = s[pos]
            if c == quote {
                pos += 1
                return String(out)
            }
            if c != "\\" {
                out.append(c)
                pos += 1
                continue
            }
            pos += 1
            guard pos < s.count else { break }
            let e = s[pos]
            pos += 1
            switch e {
            case "n": out.append("\n")
            case "t": out.append("\t")
            case "r": out.append("\r")
            case "0": out.append("\0")
            case "a": out.append("\u{07}")
            case "b": out.append("\u{08}")
            case "f": out.append("\u{0C}")
            case "v": out.append("\u{0B}")
            case "\\": out.append("\\")
            case "'": out.append("'")
            case "\"": out.append("\"")
            case "\n": break
            case "x", "u", "U":
                let len = e == "x" ? 2 : (e == "u" ? 4 : 8)
                guard pos + len <= s.count else { throw error("truncated escape in a string literal") }
                var hex = ""
                hex.unicodeScalars.append(contentsOf: s[pos..<(pos + len)])
                guard let v = UInt32(hex, radix: 16), let u = Unicode.Scalar(v) else {
                    throw error("bad escape \\\(e)\(hex) in a string literal")
                }
                out.append(u)
                pos += len
            default:
                out.append("\\")
                out.append(e)
            }
        }
        throw error("unterminated string literal")
    }
}
