/// Parses llama.cpp's GBNF (`root ::= "yes" | "no"`) into a `Grammar`.
///
/// Supported: rule definitions `name ::= ...`, alternatives `|`, string literals with escapes
/// (`\n \r \t \\ \" \xHH \uHHHH \UHHHHHHHH`), character classes `[a-z]` and `[^...]`, `.` (any
/// code point), groups `( ... )`, repetition `* + ?` and `{m}`, `{m,}`, `{m,n}`, and `#` comments.
/// Newlines end a rule except inside parentheses or before a `|`.
public enum GBNFParser {
    /// The grammar of `text`, or a `GrammarError` naming the line and column of the problem.
    public static func parse(_ text: String) throws -> Grammar {
        var parser = Parser(Array(text.unicodeScalars.map(\.value)))
        return try parser.parseGrammar()
    }
}

private struct Parser {
    let s: [UInt32]
    var i = 0
    var names: [String] = []
    var ids: [String: Int] = [:]
    var rules: [[[GrammarElement]]?] = []
    var referencedAt: [Int: Int] = [:]

    init(_ s: [UInt32]) { self.s = s }

    func error(_ message: String, at position: Int? = nil) -> GrammarError {
        let p = min(position ?? i, s.count)
        var line = 1, column = 1
        for k in 0..<p { if s[k] == 10 { line += 1; column = 1 } else { column += 1 } }
        return GrammarError("grammar: \(message) at line \(line), column \(column)")
    }

    var atEnd: Bool { i >= s.count }
    var c: UInt32 { s[i] }

    static func isWordChar(_ c: UInt32) -> Bool {
        (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || (c >= 0x30 && c <= 0x39) || c == 0x2D || c == 0x5F
    }

    /// Skips spaces, tabs and comments; newlines too when `newlines`.
    mutating func space(newlines: Bool) {
        while !atEnd {
            if c == 0x20 || c == 0x09 || c == 0x0D { i += 1 } else if c == 0x0A && newlines { i += 1 } else if c == 0x23 {  // '#'
                while !atEnd && c != 0x0A { i += 1 }
            } else { break }
        }
    }

    mutating func name() throws -> String {
        let start = i
        while !atEnd && Self.isWordChar(c) { i += 1 }
        guard i > start else { throw error("expected a rule name") }
        return String(String.UnicodeScalarView(s[start..<i].compactMap(Unicode.Scalar.init)))
    }

    mutating func ruleId(_ name: String) -> Int {
        if let id = ids[name] { return id }
        let id = names.count
        names.append(name)
        ids[name] = id
        rules.append(nil)
        return id
    }

    /// A fresh helper rule for a group or repetition inside `parent`.
    mutating func helper(_ parent: String, _ alternatives: [[GrammarElement]]) -> Int {
        var k = names.count
        var name = "\(parent)-\(k)"
        while ids[name] != nil { k += 1; name = "\(parent)-\(k)" }
        let id = ruleId(name)
        rules[id] = alternatives
        return id
    }

    mutating func parseGrammar() throws -> Grammar {
        space(newlines: true)
        while !atEnd {
            let start = i
            let n = try name()
            space(newlines: false)
            guard i + 2 < s.count, s[i] == 0x3A, s[i + 1] == 0x3A, s[i + 2] == 0x3D else { throw error("expected '::=' after '\(n)'") }
            i += 3
            let id = ruleId(n)
            guard rules[id] == nil else { throw error("rule '\(n)' is defined twice", at: start) }
            rules[id] = []  // marks it defined while its body is parsed
            rules[id] = try alternatives(parent: n, nested: false)
            space(newlines: true)
        }
        for (id, body) in rules.enumerated() where body == nil {
            throw error("rule '\(names[id])' is used but never defined", at: referencedAt[id])
        }
        guard let root = ids["root"] else { throw GrammarError("grammar: no 'root' rule") }
        return try Grammar(names: names, rules: rules.map { $0! }, root: root)
    }

    mutating func alternatives(parent: String, nested: Bool) throws -> [[GrammarElement]] {
        var result = [try sequence(parent: parent, nested: nested)]
        while true {
            // A '|' may start a continuation line even at the top level.
            let save = i
            space(newlines: true)
            if !atEnd && c == 0x7C {  // '|'
                i += 1
                result.append(try sequence(parent: parent, nested: nested))
            } else {
                i = save
                break
            }
        }
        return result
    }

    mutating func sequence(parent: String, nested: Bool) throws -> [GrammarElement] {
        var out: [GrammarElement] = []
        var lastStart = 0  // where the last item's elements begin (the operand of * + ? {})
        space(newlines: nested)
        while !atEnd {
            let ch = c
            if ch == 0x22 {  // '"'
                lastStart = out.count
                i += 1
                while true {
                    guard !atEnd else { throw error("unterminated string literal") }
                    if c == 0x22 { i += 1; break }
                    let v = try char()
                    out.append(.chars(CodePointSet([v...v])))
                }
            } else if ch == 0x5B {  // '['
                lastStart = out.count
                i += 1
                var negated = false
                if !atEnd && c == 0x5E { negated = true; i += 1 }
                var ranges: [ClosedRange<UInt32>] = []
                while true {
                    guard !atEnd else { throw error("unterminated character class") }
                    if c == 0x5D { i += 1; break }
                    let low = try char()
                    var high = low
                    if i + 1 < s.count && c == 0x2D && s[i + 1] != 0x5D {
                        i += 1
                        high = try char()
                    }
                    guard low <= high else { throw error("empty character range") }
                    ranges.append(low...high)
                }
                out.append(.chars(CodePointSet(ranges, negated: negated)))
            } else if ch == 0x2E {  // '.'
                lastStart = out.count
                i += 1
                out.append(.chars(CodePointSet([], negated: true)))
            } else if ch == 0x28 {  // '('
                lastStart = out.count
                i += 1
                let body = try alternatives(parent: parent, nested: true)
                space(newlines: true)
                guard !atEnd && c == 0x29 else { throw error("expected ')'") }
                i += 1
                out.append(.rule(helper(parent, body)))
            } else if Self.isWordChar(ch) {
                lastStart = out.count
                let at = i
                let n = try name()
                // `name ::=` on the next line is a new rule, not a reference: only possible when
                // the sequence is not nested, as a newline ends it first.
                let id = ruleId(n)
                if referencedAt[id] == nil { referencedAt[id] = at }
                out.append(.rule(id))
            } else if ch == 0x2A || ch == 0x2B || ch == 0x3F || ch == 0x7B {  // * + ? {
                guard lastStart < out.count else { throw error("repetition without an operand") }
                let operand = Array(out[lastStart...])
                out.removeSubrange(lastStart...)
                var minCount = 0, maxCount: Int? = nil
                i += 1
                switch ch {
                case 0x2A: break
                case 0x2B: minCount = 1
                case 0x3F: maxCount = 1
                default:
                    space(newlines: false)
                    minCount = try integer()
                    space(newlines: false)
                    if !atEnd && c == 0x2C {
                        i += 1
                        space(newlines: false)
                        if !atEnd && c >= 0x30 && c <= 0x39 { maxCount = try integer() }
                    } else {
                        maxCount = minCount
                    }
                    space(newlines: false)
                    guard !atEnd && c == 0x7D else { throw error("expected '}'") }
                    i += 1
                    if let m = maxCount, m < minCount { throw error("repetition {\(minCount),\(m)} has max < min") }
                    if (maxCount ?? minCount) > 10_000 { throw error("repetition count above 10000") }
                }
                out += repeated(operand, min: minCount, max: maxCount, parent: parent)
                lastStart = out.count  // x** is not meaningful; a second operator needs an operand
            } else {
                break
            }
            space(newlines: nested)
        }
        return out
    }

    /// `operand{min,max}` as elements plus helper rules (max nil: unbounded).
    mutating func repeated(_ operand: [GrammarElement], min minCount: Int, max maxCount: Int?, parent: String) -> [GrammarElement] {
        var out: [GrammarElement] = []
        for _ in 0..<minCount { out += operand }
        if let maxCount {
            // Nested optionals: (x (x (x)?)?)? for the max - min extra copies.
            var tail: Int? = nil
            for _ in 0..<(maxCount - minCount) {
                let body: [GrammarElement] = operand + (tail.map { [.rule($0)] } ?? [])
                tail = helper(parent, [body, []])
            }
            if let tail { out.append(.rule(tail)) }
        } else {
            // r ::= x r | ε
            let id = ruleId(uniqueName(parent))
            rules[id] = [operand + [.rule(id)], []]
            out.append(.rule(id))
        }
        return out
    }

    func uniqueName(_ parent: String) -> String {
        var k = names.count
        while ids["\(parent)-\(k)"] != nil { k += 1 }
        return "\(parent)-\(k)"
    }

    mutating func integer() throws -> Int {
        let start = i
        var v = 0
        while !atEnd && c >= 0x30 && c <= 0x39 {
            v = v * 10 + Int(c - 0x30)
            if v > 1_000_000 { throw error("number too large") }
            i += 1
        }
        guard i > start else { throw error("expected a number") }
        return v
    }

    /// One code point of a literal or class, with escapes.
    mutating func char() throws -> UInt32 {
        guard !atEnd else { throw error("unexpected end") }
        var v = c
        i += 1
        if v == 0x5C {  // backslash
            guard !atEnd else { throw error("unterminated escape") }
            let e = c
            i += 1
            switch e {
            case 0x6E: v = 10  // n
            case 0x72: v = 13  // r
            case 0x74: v = 9  // t
            case 0x30: v = 0
            case 0x78: v = try hex(2)  // x
            case 0x75: v = try hex(4)  // u
            case 0x55: v = try hex(8)  // U
            case 0x5C, 0x22, 0x5B, 0x5D, 0x2D, 0x5E, 0x27, 0x2F: v = e
            default: throw error("unknown escape '\\\(Character(Unicode.Scalar(e) ?? "?"))'", at: i - 2)
            }
        }
        return v
    }

    mutating func hex(_ n: Int) throws -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<n {
            guard !atEnd else { throw error("expected \(n) hex digits") }
            let d = c
            let x: UInt32
            switch d {
            case 0x30...0x39: x = d - 0x30
            case 0x61...0x66: x = d - 0x61 + 10
            case 0x41...0x46: x = d - 0x41 + 10
            default: throw error("expected \(n) hex digits")
            }
            v = v << 4 | x
            i += 1
        }
        return v
    }
}
