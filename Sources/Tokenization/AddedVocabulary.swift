/// One entry of `added_tokens` in `tokenizer.json`.
struct AddedToken: Sendable {
    var id: Int
    var content: String
    var special: Bool
    var lstrip: Bool
    var rstrip: Bool
    var normalized: Bool
    var singleWord: Bool

    init(_ json: JSONObject) throws {
        id = try json.int("id")
        content = try json.string("content")
        special = json.bool("special", default: false)
        lstrip = json.bool("lstrip", default: false)
        rstrip = json.bool("rstrip", default: false)
        normalized = json.bool("normalized", default: !special)
        singleWord = json.bool("single_word", default: false)
    }
}

/// A segment of input text: either plain text (a range) or an added token.
enum Segment {
    case text(Range<Int>)
    case token(Int)
}

/// Finds added tokens in text the way `AddedVocabulary::find_matches` does: leftmost-longest,
/// non-overlapping, then `single_word`, `lstrip` and `rstrip` applied to each match.
struct AddedTokenMatcher: Sendable {
    /// Patterns (already normalized where the token asks for it) by first scalar, longest first.
    private var byFirst: [Unicode.Scalar: [(pattern: [Unicode.Scalar], token: Int)]] = [:]
    private let tokens: [AddedToken]
    /// Whether some pattern starts with this ASCII scalar (a fast pre-check before `byFirst`).
    private var asciiFirst = [Bool](repeating: false, count: 128)

    var isEmpty: Bool { byFirst.isEmpty }

    init(tokens: [AddedToken], patterns: [String]) {
        self.tokens = tokens
        for (i, p) in patterns.enumerated() {
            let scalars = Array(p.unicodeScalars)
            guard let first = scalars.first else { continue }
            byFirst[first, default: []].append((scalars, i))
        }
        for key in byFirst.keys {
            byFirst[key]!.sort { $0.pattern.count > $1.pattern.count }
            if key.value < 128 { asciiFirst[Int(key.value)] = true }
        }
    }

    func segments(_ s: [Unicode.Scalar], range: Range<Int>) -> [Segment] {
        if isEmpty || range.isEmpty { return [.text(range)] }
        var result: [Segment] = []
        var startOffset = range.lowerBound
        var i = range.lowerBound
        let n = range.upperBound
        outer: while i < n {
            let v = s[i].value
            if v < 128 && !asciiFirst[Int(v)] { i += 1; continue }
            guard let candidates = byFirst[s[i]] else { i += 1; continue }
            for (pattern, index) in candidates where i + pattern.count <= n {
                var ok = true
                for k in 1..<max(pattern.count, 1) where s[i + k] != pattern[k] { ok = false; break }
                guard ok else { continue }
                let token = tokens[index]
                var start = i
                var stop = i + pattern.count
                if token.singleWord {
                    let startSpace = start == range.lowerBound || !Self.isWordCharacter(s[start - 1])
                    let stopSpace = stop == n || !Self.isWordCharacter(s[stop])
                    if !startSpace || !stopSpace { i = stop; continue outer }
                }
                if token.lstrip {
                    var k = start
                    while k > range.lowerBound && s[k - 1].properties.isWhitespace { k -= 1 }
                    start = max(k, startOffset)
                }
                if token.rstrip {
                    while stop < n && s[stop].properties.isWhitespace { stop += 1 }
                }
                if startOffset < start { result.append(.text(startOffset..<start)) }
                result.append(.token(token.id))
                startOffset = stop
                i = stop
                continue outer
            }
            i += 1
        }
        if startOffset < n { result.append(.text(startOffset..<n)) }
        return result
    }

    /// Rust's `char::is_alphanumeric() || c == '_'`.
    private static func isWordCharacter(_ c: Unicode.Scalar) -> Bool {
        if c == "_" { return true }
        let p = c.properties
        if p.isAlphabetic { return true }
        switch p.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }
}
