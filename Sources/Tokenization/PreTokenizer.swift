/// Text cut into pieces: one scalar buffer and the ranges of the pieces inside it.
struct Pieces {
    var scalars: [Unicode.Scalar]
    var ranges: [Range<Int>]
}

/// How a `Split` pre-tokenizer treats the matched delimiters (`tokenizers`' `SplitDelimiterBehavior`).
enum SplitBehavior: String, Sendable {
    case removed = "Removed", isolated = "Isolated", mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext", contiguous = "Contiguous"
}

/// What a `Split` looks for.
enum SplitPattern: Sendable {
    case string([Unicode.Scalar])
    case known(KnownSplitPattern)

    /// Appends the matches inside `range` to `result` (a buffer the caller reuses across pieces).
    func appendMatches(in text: [Unicode.Scalar], range: Range<Int>, into result: inout [Range<Int>]) {
        if case .known(let k) = self, k.isDeepSeekLLM {
            k.appendDeepseekLLMMatches(in: text, range: range, into: &result)
        } else {
            result.append(contentsOf: matches(in: text, range: range))
        }
    }

    func matches(in text: [Unicode.Scalar], range: Range<Int>) -> [Range<Int>] {
        switch self {
        case .known(let k): return k.matches(in: text, range: range)
        case .string(let p):
            guard !p.isEmpty else { return [] }
            var result: [Range<Int>] = []
            var i = range.lowerBound
            while i + p.count <= range.upperBound {
                var ok = true
                for k in 0..<p.count where text[i + k] != p[k] { ok = false; break }
                if ok { result.append(i..<(i + p.count)); i += p.count } else { i += 1 }
            }
            return result
        }
    }
}

/// The `pre_tokenizer` section of `tokenizer.json`.
indirect enum PreTokenizer: Sendable {
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    case split(SplitPattern, SplitBehavior, invert: Bool)
    case digits(individual: Bool)
    /// SentencePiece's space handling: " " → replacement, optional prefix, optional split before it.
    case metaspace(replacement: Unicode.Scalar, prepend: PrependScheme, split: Bool)
    case sequence([PreTokenizer])

    enum PrependScheme: String, Sendable { case always, first, never }

    static func parseMetaspace(_ json: JSONObject) throws -> (Unicode.Scalar, PrependScheme, Bool) {
        let r = try json.string("replacement")
        guard r.unicodeScalars.count == 1, let replacement = r.unicodeScalars.first else {
            throw TokenizerError(file: json.file, "Metaspace replacement must be one character at \(json.path)")
        }
        var scheme = PrependScheme.always
        if let name = json.optionalString("prepend_scheme") {
            guard let s = PrependScheme(rawValue: name) else {
                throw TokenizerError(file: json.file, "unsupported Metaspace prepend_scheme \"\(name)\" at \(json.path)")
            }
            scheme = s
        } else if !json.bool("add_prefix_space", default: true) {
            scheme = .never
        }
        return (replacement, scheme, json.bool("split", default: true))
    }

    static func parse(_ json: JSONObject) throws -> PreTokenizer {
        switch try json.type() {
        case "ByteLevel":
            return .byteLevel(addPrefixSpace: json.bool("add_prefix_space", default: true),
                              useRegex: json.bool("use_regex", default: true))
        case "Split":
            let patternJSON = try json.object("pattern")
            let pattern: SplitPattern
            if let s = patternJSON.optionalString("String") {
                pattern = .string(Array(s.unicodeScalars))
            } else if let r = patternJSON.optionalString("Regex") {
                guard let known = KnownSplitPattern(source: r) else {
                    throw TokenizerError(
                        file: json.file,
                        "unsupported Split regex \(r.debugDescription) at \(json.path) "
                            + "(supported: the GPT-2, Qwen2, Llama-3/GLM-4, DeepSeek LLM/V2, DeepSeek-V3 and o200k/MiniMax-M2 pre-tokenizer patterns)")
                }
                pattern = .known(known)
            } else {
                throw json.unsupported("Split pattern")
            }
            let behaviorName = try json.string("behavior")
            guard let behavior = SplitBehavior(rawValue: behaviorName) else {
                throw TokenizerError(file: json.file, "unsupported Split behavior \"\(behaviorName)\" at \(json.path)")
            }
            return .split(pattern, behavior, invert: json.bool("invert", default: false))
        case "Digits":
            return .digits(individual: json.bool("individual_digits", default: false))
        case "Metaspace":
            let (r, scheme, split) = try parseMetaspace(json)
            return .metaspace(replacement: r, prepend: scheme, split: split)
        case "MoEServePreset":
            let name = try json.string("name")
            guard let preset = preset(named: name) else {
                throw TokenizerError(file: json.file, "unknown pre-tokenizer preset \"\(name)\" at \(json.path) (known: \(presetNames.joined(separator: ", ")))")
            }
            return preset
        case "Sequence":
            let items = try json.array("pretokenizers")
            return .sequence(try items.enumerated().map {
                try parse(JSONObject($1, file: json.file, path: "\(json.path).pretokenizers[\($0)]"))
            })
        case let other:
            throw TokenizerError(file: json.file, "unsupported pre_tokenizer \"\(other)\" at \(json.path)")
        }
    }

    /// Whether this pre-tokenizer maps text to GPT-2's byte-level alphabet.
    var isByteLevel: Bool {
        switch self {
        case .byteLevel: return true
        case .sequence(let s): return s.contains { $0.isByteLevel }
        default: return false
        }
    }

    /// Pre-tokenizes `input`; `atStart` says whether its first piece begins the original text
    /// (Metaspace's `prepend_scheme: first`).
    func apply(_ input: Pieces, atStart: Bool = true) -> Pieces {
        switch self {
        case .sequence(let items):
            var p = input
            for item in items { p = item.apply(p, atStart: atStart) }
            return p
        case .metaspace(let replacement, let prepend, let split):
            var scalars: [Unicode.Scalar] = []
            scalars.reserveCapacity(input.scalars.count + input.ranges.count)
            var ranges: [Range<Int>] = []
            for (index, r) in input.ranges.enumerated() {
                let start = scalars.count
                let first: Unicode.Scalar? = r.isEmpty ? nil : (input.scalars[r.lowerBound] == " " ? replacement : input.scalars[r.lowerBound])
                let wantsPrefix = prepend == .always || (prepend == .first && atStart && index == 0)
                if wantsPrefix && first != replacement { scalars.append(replacement) }
                for k in r { scalars.append(input.scalars[k] == " " ? replacement : input.scalars[k]) }
                ranges.append(start..<scalars.count)
            }
            var pieces = Pieces(scalars: scalars, ranges: ranges)
            if split {
                var out: [Range<Int>] = []
                for r in ranges {
                    var matches: [Range<Int>] = []
                    for k in r where scalars[k] == replacement { matches.append(k..<(k + 1)) }
                    Self.split(r, matches: matches, .mergedWithNext, false, into: &out)
                }
                pieces.ranges = out
            }
            return pieces
        case .split(let pattern, let behavior, let invert):
            var out: [Range<Int>] = []
            out.reserveCapacity(input.ranges.count * 2)
            var matches: [Range<Int>] = []
            for r in input.ranges {
                matches.removeAll(keepingCapacity: true)
                pattern.appendMatches(in: input.scalars, range: r, into: &matches)
                Self.split(r, matches: matches, behavior, invert, into: &out)
            }
            return Pieces(scalars: input.scalars, ranges: out)
        case .digits(let individual):
            var out: [Range<Int>] = []
            for r in input.ranges {
                var matches: [Range<Int>] = []
                var i = r.lowerBound
                while i < r.upperBound {
                    if Self.isNumeric(input.scalars[i]) {
                        var e = i + 1
                        if !individual {
                            while e < r.upperBound && Self.isNumeric(input.scalars[e]) { e += 1 }
                        }
                        matches.append(i..<e)
                        i = e
                    } else { i += 1 }
                }
                Self.split(r, matches: matches, individual ? .isolated : .contiguous, false, into: &out)
            }
            return Pieces(scalars: input.scalars, ranges: out)
        case .byteLevel(let addPrefixSpace, let useRegex):
            var pieces = input
            if addPrefixSpace {
                var scalars: [Unicode.Scalar] = []
                scalars.reserveCapacity(input.scalars.count + input.ranges.count)
                var ranges: [Range<Int>] = []
                for r in input.ranges {
                    let start = scalars.count
                    if r.isEmpty || input.scalars[r.lowerBound] != " " { scalars.append(" ") }
                    scalars.append(contentsOf: input.scalars[r])
                    ranges.append(start..<scalars.count)
                }
                pieces = Pieces(scalars: scalars, ranges: ranges)
            }
            if useRegex {
                pieces = PreTokenizer.split(.known(.gpt2), .isolated, invert: false).apply(pieces, atStart: atStart)
            }
            return Self.mapToBytes(pieces)
        }
    }

    @inline(__always) static func isASCIIDigit(_ s: Unicode.Scalar) -> Bool { s.value >= 0x30 && s.value <= 0x39 }

    /// Rust's `char::is_numeric`, which `Digits` splits on: ASCII digits and every scalar of general
    /// category Nd, Nl or No (Arabic-Indic digits, superscripts, fractions, Roman numerals, ...).
    @inline(__always) static func isNumeric(_ s: Unicode.Scalar) -> Bool {
        if s.value < 0x80 { return isASCIIDigit(s) }
        switch s.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    /// Replaces each piece's text by its UTF-8 bytes spelled in the byte-level alphabet.
    static func mapToBytes(_ input: Pieces) -> Pieces {
        var scalars: [Unicode.Scalar] = []
        scalars.reserveCapacity(input.scalars.count + input.scalars.count / 4)
        var ranges: [Range<Int>] = []
        ranges.reserveCapacity(input.ranges.count)
        let table = ByteLevelTable.byteToScalar
        for r in input.ranges {
            let start = scalars.count
            for k in r {
                let s = input.scalars[k]
                let v = s.value
                if v < 0x80 {
                    scalars.append(table[Int(v)])
                } else {
                    for b in UTF8.encode(s)! { scalars.append(table[Int(b)]) }
                }
            }
            ranges.append(start..<scalars.count)
        }
        return Pieces(scalars: scalars, ranges: ranges)
    }

    /// Splits `range` around `matches` according to `behavior` (as `NormalizedString::split` does).
    static func split(
        _ range: Range<Int>, matches: [Range<Int>], _ behavior: SplitBehavior, _ invert: Bool,
        into out: inout [Range<Int>]
    ) {
        if behavior == .isolated {
            // Every segment is a piece of its own, match or not: no need to collect and flag them.
            var prev = range.lowerBound
            for m in matches {
                if prev < m.lowerBound { out.append(prev..<m.lowerBound) }
                out.append(m)
                prev = m.upperBound
            }
            if prev < range.upperBound { out.append(prev..<range.upperBound) }
            return
        }
        // Alternating segments covering the whole range, flagged as match or not.
        var segments: [(Range<Int>, Bool)] = []
        var prev = range.lowerBound
        for m in matches {
            if prev < m.lowerBound { segments.append((prev..<m.lowerBound, invert)) }
            segments.append((m, !invert))
            prev = m.upperBound
        }
        if prev < range.upperBound { segments.append((prev..<range.upperBound, invert)) }
        if range.isEmpty { return }
        switch behavior {
        case .isolated:
            for (r, _) in segments { out.append(r) }
        case .removed:
            for (r, isMatch) in segments where !isMatch { out.append(r) }
        case .mergedWithPrevious:
            var previousMatch = false
            var acc: [Range<Int>] = []
            for (r, isMatch) in segments {
                if isMatch && !previousMatch, let last = acc.last {
                    acc[acc.count - 1] = last.lowerBound..<r.upperBound
                } else {
                    acc.append(r)
                }
                previousMatch = isMatch
            }
            out.append(contentsOf: acc)
        case .mergedWithNext:
            var previousMatch = false
            var acc: [Range<Int>] = []
            for (r, isMatch) in segments.reversed() {
                if isMatch && !previousMatch, let last = acc.last {
                    acc[acc.count - 1] = r.lowerBound..<last.upperBound
                } else {
                    acc.append(r)
                }
                previousMatch = isMatch
            }
            out.append(contentsOf: acc.reversed())
        case .contiguous:
            var previousMatch = false
            var acc: [Range<Int>] = []
            for (r, isMatch) in segments {
                if isMatch == previousMatch, let last = acc.last {
                    acc[acc.count - 1] = last.lowerBound..<r.upperBound
                } else {
                    acc.append(r)
                }
                previousMatch = isMatch
            }
            out.append(contentsOf: acc)
        }
    }
}
