/// Matchers for the `Split` patterns of DeepSeek LLM's tokenizer, which DeepSeek-V2, DeepSeek-V2-Lite
/// and DeepSeek-Coder-V2 ship too (llama.cpp calls it `deepseek-llm`). Its pre-tokenizer is a
/// `Sequence` of five `Split`s (all `Isolated`), `Digits(individual_digits)` and `ByteLevel`:
///
///     [\r\n]                         every CR and LF on its own
///     \s?[<cased letters>]+          letter runs from an explicit list of ranges, one optional leading space
///     \s?[!-/:-~！-／：-～‘-‟　-。]+   ASCII and full-width punctuation runs (ASCII letters included)
///     \s+$                           trailing white space (Oniguruma's `$`: end of the piece or before LF)
///     [一-龥ࠀ-一가-퟿]+              runs of U+0800-U+9FA5 and U+AC00-U+D7FF
///
/// Each Split cuts every piece the previous one left, so the later classes also cut inside earlier
/// matches: the punctuation class splits "café" after "caf" (é is a letter, not in the class) and the
/// CJK range splits Greek Extended or Georgian letters from their leading space.
///
/// The character classes are parsed from the pattern text itself (below), so the table the matcher
/// uses is the one spelled in the published tokenizer.json, not a second copy.
extension KnownSplitPattern {
    /// DeepSeek LLM's letter class, as in its tokenizer.json (the cased letters of Unicode 10 in
    /// explicit ranges; U+2126 OHM and U+212A KELVIN included, ª and º not).
    static let deepseekLLMLetterClass =
        "A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}"
        + "\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}"
        + "\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}"
        + "\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}"
        + "\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}"
        + "\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}"
        + "\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}"
        + "\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}"
        + "\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}"
        + "\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}"
        + "\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}"
        + "\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}"
        + "\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}"
    /// `!-/ :-~ ！-／ ：-～ ‘-‟ 　-。`: ASCII 0x21-0x2F and 0x3A-0x7E (letters too), their full-width
    /// forms, the curly quotes U+2018-U+201F and U+3000-U+3002 (ideographic space, comma, full stop).
    static let deepseekLLMPunctuationClass =
        "!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}"
    /// `一-龥ࠀ-一가-퟿`: U+4E00-U+9FA5, U+0800-U+4E00, U+AC00-U+D7FF.
    static let deepseekLLMCJKClass = "\u{4E00}-\u{9FA5}\u{0800}-\u{4E00}\u{AC00}-\u{D7FF}"

    /// `[\r\n]` with real CR and LF characters (the JSON has `\r`, `\n` escapes there).
    static let lineBreaksSource = "[\r\n]"
    static let deepseekLLMLettersSource = #"\s?["# + deepseekLLMLetterClass + "]+"
    static let deepseekLLMPunctuationSource = #"\s?["# + deepseekLLMPunctuationClass + "]+"
    static let trailingWhitespaceSource = #"\s+$"#
    static let deepseekLLMCJKSource = "[" + deepseekLLMCJKClass + "]+"

    /// A bracket expression's body (`a-z` ranges and single characters, no escapes) as sorted,
    /// merged inclusive scalar ranges.
    static func scalarRanges(ofClass body: String) -> [ClosedRange<UInt32>] {
        let s = Array(body.unicodeScalars)
        var ranges: [ClosedRange<UInt32>] = []
        var i = 0
        while i < s.count {
            if i + 2 < s.count, s[i + 1] == "-" {
                ranges.append(s[i].value...s[i + 2].value)
                i += 3
            } else {
                ranges.append(s[i].value...s[i].value)
                i += 1
            }
        }
        ranges.sort { $0.lowerBound < $1.lowerBound }
        var merged: [ClosedRange<UInt32>] = []
        for r in ranges {
            if let last = merged.last, r.lowerBound <= last.upperBound &+ 1 {
                merged[merged.count - 1] = last.lowerBound...max(last.upperBound, r.upperBound)
            } else {
                merged.append(r)
            }
        }
        return merged
    }

    /// One character class: a 128-entry ASCII table and binary search over the ranges above it.
    struct ScalarClass: Sendable {
        let ascii: [Bool]
        let lows: [UInt32]
        let highs: [UInt32]

        init(_ body: String) {
            let ranges = KnownSplitPattern.scalarRanges(ofClass: body)
            ascii = (0..<128).map { v in ranges.contains { $0.contains(UInt32(v)) } }
            let upper = ranges.filter { $0.upperBound >= 128 }.map { max($0.lowerBound, 128)...$0.upperBound }
            lows = upper.map(\.lowerBound)
            highs = upper.map(\.upperBound)
        }

        @inline(__always)
        func contains(_ s: Unicode.Scalar) -> Bool {
            let v = s.value
            if v < 128 { return ascii[Int(v)] }
            // Last range starting at or below v.
            var lo = 0
            var hi = lows.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if lows[mid] <= v { lo = mid + 1 } else { hi = mid }
            }
            return lo > 0 && v <= highs[lo - 1]
        }
    }

    static let letterClassLLM = ScalarClass(deepseekLLMLetterClass)
    static let punctuationClassLLM = ScalarClass(deepseekLLMPunctuationClass)
    static let cjkClassLLM = ScalarClass(deepseekLLMCJKClass)

    /// `\s` as Oniguruma has it: White_Space (ASCII fast path).
    @inline(__always)
    static func isSpace(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if v < 128 { return v == 0x20 || (v >= 0x09 && v <= 0x0D) }
        return s.properties.isWhitespace
    }

    /// Whether this is one of DeepSeek LLM's patterns (matched by `appendDeepseekLLMMatches`).
    var isDeepSeekLLM: Bool {
        switch self {
        case .lineBreaks, .deepseekLLMLetters, .deepseekLLMPunctuation, .trailingWhitespace, .deepseekLLMCJK: return true
        default: return false
        }
    }

    /// The match ranges of a DeepSeek LLM pattern inside `range` of `text`, leftmost first.
    func deepseekLLMMatches(in text: [Unicode.Scalar], range: Range<Int>) -> [Range<Int>] {
        var result: [Range<Int>] = []
        appendDeepseekLLMMatches(in: text, range: range, into: &result)
        return result
    }

    /// Appends the match ranges to `result`, which the caller reuses across pieces (these patterns
    /// run five times over every piece, so an array per piece and pattern would dominate).
    func appendDeepseekLLMMatches(in text: [Unicode.Scalar], range: Range<Int>, into result: inout [Range<Int>]) {
        guard !range.isEmpty else { return }
        text.withUnsafeBufferPointer { t in
            let n = range.upperBound
            switch self {
            case .lineBreaks:
                for k in range where t[k] == "\n" || t[k] == "\r" { result.append(k..<(k + 1)) }
            case .deepseekLLMLetters: Self.optionalSpaceRuns(t, range, Self.letterClassLLM, into: &result)
            case .deepseekLLMPunctuation: Self.optionalSpaceRuns(t, range, Self.punctuationClassLLM, into: &result)
            case .deepseekLLMCJK:
                var i = range.lowerBound
                while i < n {
                    guard Self.cjkClassLLM.contains(t[i]) else { i += 1; continue }
                    var e = i + 1
                    while e < n && Self.cjkClassLLM.contains(t[e]) { e += 1 }
                    result.append(i..<e)
                    i = e
                }
            case .trailingWhitespace:
                // `\s+$` with Ruby's `$` (end of the piece, or just before an LF). A white-space run
                // [i, e) reaching the end matches whole; otherwise `\s+` backs off to the run's last LF
                // (it must keep at least one character), and no later start in the run can match.
                var i = range.lowerBound
                while i < n {
                    guard Self.isSpace(t[i]) else { i += 1; continue }
                    var e = i
                    var lastLF = -1
                    while e < n && Self.isSpace(t[e]) {
                        if t[e] == "\n" { lastLF = e }
                        e += 1
                    }
                    if e == n {
                        result.append(i..<n)
                    } else if lastLF > i {
                        result.append(i..<lastLF)
                    }
                    i = e
                }
            default:
                break
            }
        }
    }

    /// `\s?[class]+` over `range`: at each position one optional white-space character then a run of
    /// the class; the space is taken only when the class follows it (greedy `?`, then backtracking).
    private static func optionalSpaceRuns(
        _ t: UnsafeBufferPointer<Unicode.Scalar>, _ range: Range<Int>, _ cls: ScalarClass,
        into result: inout [Range<Int>]
    ) {
        let n = range.upperBound
        var i = range.lowerBound
        while i < n {
            let start: Int
            if cls.contains(t[i]) {
                start = i + 1
            } else if i + 1 < n, isSpace(t[i]), cls.contains(t[i + 1]) {
                start = i + 2
            } else {
                i += 1
                continue
            }
            // A character both white space and in the class (U+3000) ends at the same place either way.
            var e = start
            while e < n && cls.contains(t[e]) { e += 1 }
            result.append(i..<e)
            i = e
        }
    }
}
