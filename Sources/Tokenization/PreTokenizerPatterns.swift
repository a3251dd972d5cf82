/// Hand-written matchers for the pre-tokenizer regular expressions real checkpoints use.
///
/// `tokenizers` runs these through Oniguruma; re-implementing the three known patterns directly
/// (leftmost alternative wins, with the same backtracking outcome) is exact and an order of magnitude
/// faster than a general regex engine. Unknown patterns are refused when the tokenizer is loaded.
enum KnownSplitPattern: Sendable {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (GPT-2, GPT-NeoX, OLMoE).
    case gpt2
    /// `(?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+` (Qwen2, Qwen3).
    /// `maxDigits` is 1 for Qwen2 and 3 for the cl100k/Llama-3 variant (`\p{N}{1,3}`).
    case cl100k(maxDigits: Int)
    /// `\p{N}{1,3}`: numbers in groups of up to three (DeepSeek-V3's first Split).
    case numberTriples
    /// `[一-龥぀-ゟ゠-ヿ]+`: runs of CJK ideographs (U+4E00-U+9FA5), hiragana and katakana (DeepSeek-V3's second).
    case cjkRuns
    /// DeepSeek-V3's third Split: ASCII punctuation + ASCII letters, letters and marks with one optional
    /// leader, punctuation and symbol runs, then the usual white-space tail (see `PreTokenizerWordClasses.swift`).
    case deepseekV3
    /// o200k (gpt-oss, MiniMax-M2): case-aware letter runs with trailing contractions, `\p{N}{1,3}`,
    /// ` ?[^\s\p{L}\p{N}]+[\r\n/]*`, then the usual white-space tail.
    case o200k
    /// DeepSeek LLM / DeepSeek-V2's five Splits (see `PreTokenizerDeepSeekLLM.swift`): `[\r\n]`,
    /// `\s?[cased letters]+`, `\s?[ASCII and full-width punctuation]+`, `\s+$`, `[U+0800-U+9FA5 Hangul]+`.
    case lineBreaks, deepseekLLMLetters, deepseekLLMPunctuation, trailingWhitespace, deepseekLLMCJK

    static let gpt2Source = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    static let qwen2Source =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let llama3Source =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// The matcher for `source`, or nil when the pattern is not one of the known ones.
    init?(source: String) {
        switch source {
        case Self.gpt2Source: self = .gpt2
        case Self.qwen2Source: self = .cl100k(maxDigits: 1)
        case Self.llama3Source: self = .cl100k(maxDigits: 3)
        case Self.numberTriplesSource: self = .numberTriples
        case Self.cjkRunsSource: self = .cjkRuns
        case Self.deepseekV3Source: self = .deepseekV3
        case Self.o200kSource: self = .o200k
        case Self.lineBreaksSource: self = .lineBreaks
        case Self.deepseekLLMLettersSource: self = .deepseekLLMLetters
        case Self.deepseekLLMPunctuationSource: self = .deepseekLLMPunctuation
        case Self.trailingWhitespaceSource: self = .trailingWhitespace
        case Self.deepseekLLMCJKSource: self = .deepseekLLMCJK
        default: return nil
        }
    }

    /// Character classes: letter (`\p{L}`), number (`\p{N}`), white space (`\s`), anything else.
    enum Class: UInt8 { case other = 0, letter = 1, number = 2, space = 3 }

    private static let asciiClasses: [Class] = (0..<128).map { v in
        let s = Unicode.Scalar(UInt8(v))
        switch v {
        case 0x41...0x5A, 0x61...0x7A: return .letter
        case 0x30...0x39: return .number
        case 0x09...0x0D, 0x20: return .space
        default: _ = s; return .other
        }
    }

    @inline(__always)
    static func classify(_ s: Unicode.Scalar, _ ascii: UnsafeBufferPointer<Class>) -> Class {
        if s.value < 128 { return ascii[Int(s.value)] }
        let p = s.properties
        if p.isWhitespace { return .space }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }

    /// The match ranges of the pattern inside `range` of `text`, leftmost first, non-overlapping.
    func matches(in text: [Unicode.Scalar], range: Range<Int>) -> [Range<Int>] {
        switch self {
        case .gpt2, .cl100k: break
        case .numberTriples, .cjkRuns, .deepseekV3, .o200k: return wordClassMatches(in: text, range: range)
        case .lineBreaks, .deepseekLLMLetters, .deepseekLLMPunctuation, .trailingWhitespace, .deepseekLLMCJK:
            return deepseekLLMMatches(in: text, range: range)
        }
        var result: [Range<Int>] = []
        result.reserveCapacity(range.count / 3 + 1)
        text.withUnsafeBufferPointer { buf in
            var i = range.lowerBound
            let n = range.upperBound
            var classes = [Class](repeating: .other, count: range.count)
            Self.asciiClasses.withUnsafeBufferPointer { ascii in
                for k in range { classes[k - range.lowerBound] = Self.classify(buf[k], ascii) }
            }
            classes.withUnsafeBufferPointer { cls0 in
                let base = range.lowerBound
                @inline(__always) func cls(_ k: Int) -> Class { cls0[k - base] }
                while i < n {
                    let end: Int
                    switch self {
                    case .gpt2: end = Self.matchGPT2(buf, i, n, cls)
                    case .cl100k(let maxDigits): end = Self.matchCL100K(buf, i, n, maxDigits, cls)
                    default: end = i  // the word-class and DeepSeek LLM patterns, handled above
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
    private static func isNewline(_ s: Unicode.Scalar) -> Bool { s == "\n" || s == "\r" }

    /// Length of a contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`) at `i`, or 0.
    @inline(__always)
    static func contraction(
        _ t: UnsafeBufferPointer<Unicode.Scalar>, _ i: Int, _ n: Int, caseInsensitive: Bool
    ) -> Int {
        guard t[i] == "'", i + 1 < n else { return 0 }
        @inline(__always) func eq(_ s: Unicode.Scalar, _ lower: Unicode.Scalar) -> Bool {
            if s == lower { return true }
            guard caseInsensitive else { return false }
            if s.value == lower.value - 32 { return true }
            // Unicode simple case folding maps U+017F LATIN SMALL LETTER LONG S to "s".
            return lower == "s" && s.value == 0x17F
        }
        let a = t[i + 1]
        if eq(a, "s") || eq(a, "t") || eq(a, "m") || eq(a, "d") { return 2 }
        guard i + 2 < n else { return 0 }
        let b = t[i + 2]
        if (eq(a, "r") && eq(b, "e")) || (eq(a, "v") && eq(b, "e")) || (eq(a, "l") && eq(b, "l")) { return 3 }
        return 0
    }

    /// End of the GPT-2 pattern's match starting at `i` (`i` if none).
    @inline(__always)
    private static func matchGPT2(
        _ t: UnsafeBufferPointer<Unicode.Scalar>, _ i: Int, _ n: Int, _ cls: (Int) -> Class
    ) -> Int {
        let c = t[i]
        if c == "'" {
            let k = contraction(t, i, n, caseInsensitive: false)
            if k > 0 { return i + k }
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let j = (c == " " && i + 1 < n) ? i + 1 : i
        let first = cls(j)
        if first != .space && (j > i || c != " ") {
            var e = j + 1
            while e < n && cls(e) == first { e += 1 }
            return e
        }
        // `\s+(?!\S)` then `\s+`
        return whitespace(t, i, n, cls)
    }

    /// `\s+(?!\S)|\s+` at `i` (which is white space).
    @inline(__always)
    private static func whitespace(
        _ t: UnsafeBufferPointer<Unicode.Scalar>, _ i: Int, _ n: Int, _ cls: (Int) -> Class
    ) -> Int {
        var e = i
        while e < n && cls(e) == .space { e += 1 }
        if e == i { return i + 1 }  // unreachable for these patterns: every scalar has a class
        if e == n { return e }
        if e - 1 > i { return e - 1 }
        return e
    }

    /// End of the Qwen2 / Llama-3 pattern's match starting at `i`.
    @inline(__always)
    private static func matchCL100K(
        _ t: UnsafeBufferPointer<Unicode.Scalar>, _ i: Int, _ n: Int, _ maxDigits: Int, _ cls: (Int) -> Class
    ) -> Int {
        let c = t[i]
        if c == "'" {
            let k = contraction(t, i, n, caseInsensitive: true)
            if k > 0 { return i + k }
        }
        let ci = cls(i)
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if ci == .letter {
            var e = i + 1
            while e < n && cls(e) == .letter { e += 1 }
            return e
        }
        if ci != .number && !isNewline(c) && i + 1 < n && cls(i + 1) == .letter {
            var e = i + 2
            while e < n && cls(e) == .letter { e += 1 }
            return e
        }
        // `\p{N}{1,maxDigits}`
        if ci == .number {
            var e = i + 1
            while e < n && e - i < maxDigits && cls(e) == .number { e += 1 }
            return e
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let j = (c == " " && i + 1 < n && cls(i + 1) == .other) ? i + 1 : i
        if cls(j) == .other {
            var e = j + 1
            while e < n && cls(e) == .other { e += 1 }
            while e < n && isNewline(t[e]) { e += 1 }
            return e
        }
        // `\s*[\r\n]+`
        var e = i
        var lastNewline = -1
        while e < n && cls(e) == .space {
            if isNewline(t[e]) { lastNewline = e }
            e += 1
        }
        if lastNewline >= 0 { return lastNewline + 1 }
        return whitespace(t, i, n, cls)
    }
}
