/// Matchers for the pre-tokenizer patterns that tell letters, marks, punctuation and symbols apart:
/// DeepSeek-V3's three Splits and o200k (gpt-oss, MiniMax-M2).
///
/// Like the GPT-2 and cl100k matchers next door, each one follows what Oniguruma does with the
/// pattern: alternatives tried left to right at each position, greedy runs, and the backtracking
/// spelled out where the classes of two consecutive runs overlap (o200k's upper/lower letter runs).
extension KnownSplitPattern {
    /// `\p{N}{1,3}`, JSON-decoded as it appears in DeepSeek-V3's tokenizer.json.
    static let numberTriplesSource = #"\p{N}{1,3}"#
    /// `[一-龥぀-ゟ゠-ヿ]+`: U+4E00-U+9FA5, U+3040-U+309F, U+30A0-U+30FF.
    static let cjkRunsSource = "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+"
    /// DeepSeek-V3's third Split; its `[^\r\n...]`, `[\r\n]` hold real CR and LF characters (the JSON has
    /// `\r`, `\n` escapes there, unlike the `\\s` beside them).
    static let deepseekV3Source =
        ##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^"## + "\r\n" + #"\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+["#
        + "\r\n" + #"]*|\s*["# + "\r\n" + #"]+|\s+(?!\S)|\s+"#
    /// o200k as tokenizer.json spells it (tiktoken's o200k_base with its `[\r\n/]*`).
    static let o200kSource =
        #"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"#
        + #"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"#
        + #"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// General-category groups these patterns distinguish. `space` is `\s` (White_Space) and wins
    /// over the category; `upper` is Lu/Lt, `lower` Ll, `otherLetter` Lm/Lo (in both of o200k's
    /// letter classes), `mark` M, `number` N, `punctuation` P, `symbol` S, `other` the rest (C, Z
    /// that is not white space).
    enum WordClass: UInt8 {
        case other, upper, lower, otherLetter, mark, number, punctuation, symbol, space
    }

    static func wordClass(_ s: Unicode.Scalar) -> WordClass {
        let v = s.value
        if v < 0x80 {
            switch v {
            case 0x41...0x5A: return .upper
            case 0x61...0x7A: return .lower
            case 0x30...0x39: return .number
            case 0x09...0x0D, 0x20: return .space
            case 0x24, 0x2B, 0x3C...0x3E, 0x5E, 0x60, 0x7C, 0x7E: return .symbol  // $ + < = > ^ ` | ~
            case 0x21...0x2F, 0x3A...0x40, 0x5B...0x60, 0x7B...0x7E: return .punctuation
            default: return .other
            }
        }
        let p = s.properties
        if p.isWhitespace { return .space }
        switch p.generalCategory {
        case .uppercaseLetter, .titlecaseLetter: return .upper
        case .lowercaseLetter: return .lower
        case .modifierLetter, .otherLetter: return .otherLetter
        case .nonspacingMark, .spacingMark, .enclosingMark: return .mark
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation: return .punctuation
        case .mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol: return .symbol
        default: return .other
        }
    }

    /// The match ranges of a word-class pattern inside `range` of `text`, leftmost first.
    func wordClassMatches(in text: [Unicode.Scalar], range: Range<Int>) -> [Range<Int>] {
        var result: [Range<Int>] = []
        guard !range.isEmpty else { return result }
        var classes = [WordClass](repeating: .other, count: range.count)
        for k in range { classes[k - range.lowerBound] = Self.wordClass(text[k]) }
        text.withUnsafeBufferPointer { t in
            classes.withUnsafeBufferPointer { c0 in
                let base = range.lowerBound
                let n = range.upperBound
                let c = { (k: Int) -> WordClass in c0[k - base] }
                var i = base
                while i < n {
                    let end: Int
                    switch self {
                    case .numberTriples: end = Self.numberRun(c, i, n, max: 3)
                    case .cjkRuns:
                        var e = i
                        while e < n && Self.isCJK(t[e]) { e += 1 }
                        end = e
                    case .deepseekV3: end = Self.matchDeepSeekV3(t, i, n, c)
                    case .o200k: end = Self.matchO200K(t, i, n, c)
                    default: end = i  // not word-class patterns
                    }
                    if end > i {
                        result.append(i..<end)
                        i = end
                    } else {
                        i += 1
                    }
                }
            }
        }
        return result
    }

    @inline(__always)
    static func isCJK(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        return (v >= 0x4E00 && v <= 0x9FA5) || (v >= 0x3040 && v <= 0x30FF)
    }

    @inline(__always)
    private static func isLetter(_ c: WordClass) -> Bool { c == .upper || c == .lower || c == .otherLetter }

    @inline(__always)
    private static func isCRLF(_ s: Unicode.Scalar) -> Bool { s == "\n" || s == "\r" }

    @inline(__always)
    private static func isASCIILetter(_ s: Unicode.Scalar) -> Bool {
        (s.value >= 0x41 && s.value <= 0x5A) || (s.value >= 0x61 && s.value <= 0x7A)
    }

    /// `\p{N}{1,max}` at `i`: its end, or `i`.
    @inline(__always)
    private static func numberRun(_ c: (Int) -> WordClass, _ i: Int, _ n: Int, max: Int) -> Int {
        var e = i
        while e < n && e - i < max && c(e) == .number { e += 1 }
        return e
    }

    /// `\s*[\r\n]+|\s+(?!\S)|\s+` at `i`: its end, or `i` when `i` is not white space.
    @inline(__always)
    private static func spaceTail(_ t: UnsafeBufferPointer<Unicode.Scalar>, _ i: Int, _ n: Int, _ c: (Int) -> WordClass) -> Int {
        var e = i
        var lastNewline = -1
        while e < n && c(e) == .space {
            if isCRLF(t[e]) { lastNewline = e }
            e += 1
        }
        if e == i { return i }
        if lastNewline >= 0 { return lastNewline + 1 }  // `\s*` backs off to the last newline
        if e == n || e - 1 == i { return e }  // `\s+(?!\S)` at the end, else `\s+` of one
        return e - 1  // `\s+(?!\S)` leaves the last space to the next word
    }

    /// DeepSeek-V3: `[ASCII punct][A-Za-z]+ | [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ | ?[\p{P}\p{S}]+[\r\n]* | white space`.
    private static func matchDeepSeekV3(
        _ t: UnsafeBufferPointer<Unicode.Scalar>, _ i: Int, _ n: Int, _ c: (Int) -> WordClass
    ) -> Int {
        let s = t[i]
        if s.value < 0x80, c(i) == .punctuation || c(i) == .symbol, i + 1 < n, isASCIILetter(t[i + 1]) {
            var e = i + 2
            while e < n && isASCIILetter(t[e]) { e += 1 }
            return e
        }
        @inline(__always) func letterOrMark(_ k: Int) -> Bool { isLetter(c(k)) || c(k) == .mark }
        @inline(__always) func run(from k: Int) -> Int {
            var e = k
            while e < n && letterOrMark(e) { e += 1 }
            return e
        }
        // A mark at `i` may be the optional leader or the first of the run: the end is the same.
        if letterOrMark(i) { return run(from: i) }
        let ci = c(i)
        if ci != .punctuation && ci != .symbol && !isCRLF(s) && i + 1 < n && letterOrMark(i + 1) {
            return run(from: i + 1)
        }
        @inline(__always) func punctOrSymbol(_ k: Int) -> Bool { c(k) == .punctuation || c(k) == .symbol }
        let j = (s == " " && i + 1 < n && punctOrSymbol(i + 1)) ? i + 1 : i
        if punctOrSymbol(j) {
            var e = j + 1
            while e < n && punctOrSymbol(e) { e += 1 }
            while e < n && isCRLF(t[e]) { e += 1 }
            return e
        }
        return spaceTail(t, i, n, c)
    }

    /// o200k: `P?U*W+C? | P?U+W*C? | \p{N}{1,3} | ?[^\s\p{L}\p{N}]+[\r\n/]* | white space`, with
    /// P = `[^\r\n\p{L}\p{N}]`, U = Lu Lt Lm Lo M, W = Ll Lm Lo M, C a case-insensitive contraction.
    private static func matchO200K(
        _ t: UnsafeBufferPointer<Unicode.Scalar>, _ i: Int, _ n: Int, _ c: (Int) -> WordClass
    ) -> Int {
        @inline(__always) func isU(_ k: Int) -> Bool {
            let x = c(k); return x == .upper || x == .otherLetter || x == .mark
        }
        @inline(__always) func isW(_ k: Int) -> Bool {
            let x = c(k); return x == .lower || x == .otherLetter || x == .mark
        }
        @inline(__always) func withContraction(_ e: Int) -> Int {
            e < n ? e + contraction(t, e, n, caseInsensitive: true) : e
        }
        let ci = c(i)
        let leaderPossible = !isLetter(ci) && ci != .number && !isCRLF(t[i])
        // First alternative, backtracking as the engine does: the leader taken first, then `U*` from its
        // longest run down to empty until `W+` can start.
        for lead in leaderPossible ? [1, 0] : [0] {
            let j = i + lead
            var e1 = j
            while e1 < n && isU(e1) { e1 += 1 }
            var k = e1
            while k >= j {
                if k < n && isW(k) {
                    var e2 = k + 1
                    while e2 < n && isW(e2) { e2 += 1 }
                    return withContraction(e2)
                }
                k -= 1
            }
        }
        // Second alternative: `U+` cannot fail once it starts, and `W*` may be empty.
        for lead in leaderPossible ? [1, 0] : [0] {
            let j = i + lead
            if j < n && isU(j) {
                var e = j + 1
                while e < n && isU(e) { e += 1 }
                while e < n && isW(e) { e += 1 }
                return withContraction(e)
            }
        }
        if ci == .number { return numberRun(c, i, n, max: 3) }
        @inline(__always) func isOther(_ k: Int) -> Bool {
            let x = c(k); return x != .space && !isLetter(x) && x != .number
        }
        let j = (t[i] == " " && i + 1 < n && isOther(i + 1)) ? i + 1 : i
        if isOther(j) {
            var e = j + 1
            while e < n && isOther(e) { e += 1 }
            while e < n && (isCRLF(t[e]) || t[e] == "/") { e += 1 }
            return e
        }
        return spaceTail(t, i, n, c)
    }
}
