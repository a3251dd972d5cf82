import Foundation

/// The `decoder` section of `tokenizer.json`: each step maps a list of token strings to a new list,
/// as `Decoder::decode_chain` does in `tokenizers`.
indirect enum Decoder: Sendable {
    case byteLevel
    case replace(pattern: String, content: String)
    case byteFallback
    case fuse
    case strip(content: Unicode.Scalar, start: Int, stop: Int)
    case metaspace(replacement: Unicode.Scalar, prependScheme: PreTokenizer.PrependScheme)
    case sequence([Decoder])

    static func parse(_ json: JSONObject) throws -> Decoder {
        switch try json.type() {
        case "ByteLevel": return .byteLevel
        case "Replace":
            return .replace(pattern: try Normalizer.stringPattern(json), content: try json.string("content"))
        case "ByteFallback": return .byteFallback
        case "Metaspace":
            let (r, scheme, _) = try PreTokenizer.parseMetaspace(json)
            return .metaspace(replacement: r, prependScheme: scheme)
        case "Fuse": return .fuse
        case "Strip":
            let content = try json.string("content")
            guard content.unicodeScalars.count == 1, let c = content.unicodeScalars.first else {
                throw TokenizerError(file: json.file, "Strip decoder content must be one character at \(json.path)")
            }
            return .strip(content: c, start: try json.int("start"), stop: try json.int("stop"))
        case "Sequence":
            let items = try json.array("decoders")
            return .sequence(try items.enumerated().map {
                try parse(JSONObject($1, file: json.file, path: "\(json.path).decoders[\($0)]"))
            })
        case let other:
            throw TokenizerError(file: json.file, "unsupported decoder \"\(other)\" at \(json.path)")
        }
    }

    /// Whether the chain contains `ByteFallback` (streaming must hold back trailing `<0xXX>` tokens).
    var hasByteFallback: Bool {
        switch self {
        case .byteFallback: return true
        case .sequence(let s): return s.contains { $0.hasByteFallback }
        default: return false
        }
    }

    func decodeChain(_ tokens: [String]) -> [String] {
        switch self {
        case .sequence(let items):
            var t = tokens
            for d in items { t = d.decodeChain(t) }
            return t
        case .byteLevel:
            var bytes: [UInt8] = []
            for token in tokens { Self.appendByteLevelBytes(of: token, to: &bytes) }
            return [String(decoding: bytes, as: UTF8.self)]
        case .replace(let pattern, let content):
            return tokens.map { Normalizer.replaceAll($0, pattern, content) }
        case .byteFallback:
            var out: [String] = []
            out.reserveCapacity(tokens.count)
            var pending: [UInt8] = []
            func flush() {
                if pending.isEmpty { return }
                // Strict UTF-8 check without Foundation (which drops U+FEFF when decoding bytes).
                let s = String(decoding: pending, as: UTF8.self)
                if s.utf8.elementsEqual(pending) {
                    out.append(s)
                } else {
                    for _ in pending { out.append("\u{FFFD}") }
                }
                pending.removeAll()
            }
            for token in tokens {
                if let b = Self.byteFallbackValue(token) {
                    pending.append(b)
                } else {
                    flush()
                    out.append(token)
                }
            }
            flush()
            return out
        case .fuse:
            return [tokens.joined()]
        case .metaspace(let replacement, let scheme):
            // As `tokenizers`: every replacement character becomes a space, except in the first token
            // (when a prefix is prepended), where they are dropped.
            return tokens.enumerated().map { i, token in
                var out = ""
                for c in token.unicodeScalars {
                    if c == replacement {
                        if i == 0 && scheme != .never { continue }
                        out.unicodeScalars.append(" ")
                    } else {
                        out.unicodeScalars.append(c)
                    }
                }
                return out
            }
        case .strip(let content, let start, let stop):
            return tokens.map { token in
                let chars = Array(token.unicodeScalars)
                var startCut = 0
                for (i, c) in chars.prefix(start).enumerated() {
                    if c == content { startCut = i + 1 } else { break }
                }
                var stopCut = chars.count
                for (i, c) in chars.reversed().prefix(stop).enumerated() {
                    if c == content { stopCut = chars.count - i - 1 } else { break }
                }
                if startCut >= stopCut { return "" }
                var result = ""
                result.unicodeScalars.append(contentsOf: chars[startCut..<stopCut])
                return result
            }
        }
    }

    /// Appends the bytes a `ByteLevel` decoder makes of `token`: one byte per character of the
    /// byte-to-unicode table, or the token's own UTF-8 when a character is not in the table.
    static func appendByteLevelBytes(of token: String, to bytes: inout [UInt8]) {
        let start = bytes.count
        for s in token.unicodeScalars {
            guard let b = ByteLevelTable.byte(for: s) else {
                bytes.removeSubrange(start...)
                bytes.append(contentsOf: token.utf8)
                return
            }
            bytes.append(b)
        }
    }

    /// Where the chain's text comes from, for telling a character still being assembled from a final
    /// U+FFFD (see `Tokenizer.mayEndInsideCharacter`).
    enum ByteSource: Sendable {
        /// `ByteLevel` alone: the text is the UTF-8 decoding of every token's table bytes.
        case byteLevel
        /// A chain with `ByteFallback` (and no `ByteLevel`): `<0xXX>` runs are decoded as UTF-8.
        case byteFallback
        /// No byte decoding: every token is whole characters, so a U+FFFD is a real character.
        case text
        /// A combination this does not follow (a U+FFFD may or may not be final).
        case unknown
    }

    var byteSource: ByteSource {
        switch self {
        case .byteLevel: return .byteLevel
        case .byteFallback: return .byteFallback
        case .sequence(let items):
            let kinds = items.map(\.byteSource)
            if kinds.contains(.unknown) { return .unknown }
            let level = kinds.filter { $0 == .byteLevel }.count, fallback = kinds.filter { $0 == .byteFallback }.count
            if level == 0 { return fallback == 0 ? .text : .byteFallback }
            // ByteLevel is only followed exactly when it is the whole chain.
            return level == 1 && items.count == 1 ? .byteLevel : .unknown
        default: return .text
        }
    }

    /// Whether `bytes` (the last few bytes of a text, at most 4 needed) end in a valid but unfinished
    /// UTF-8 sequence, the only ending that more bytes can still turn into a character. A lead byte
    /// followed by fewer continuation bytes than it announces, each in its allowed range (RFC 3629's
    /// table: E0 needs A0-BF next, ED 80-9F, F0 90-BF, F4 80-8F).
    static func endsInUnfinishedUTF8(_ bytes: ArraySlice<UInt8>) -> Bool {
        var i = bytes.endIndex - 1
        var continuations = 0
        while i >= bytes.startIndex, bytes[i] & 0xC0 == 0x80, continuations < 3 {
            i -= 1
            continuations += 1
        }
        guard i >= bytes.startIndex else { return false }
        let lead = bytes[i]
        let needed: Int
        switch lead {
        case 0xC2...0xDF: needed = 1
        case 0xE0...0xEF: needed = 2
        case 0xF0...0xF4: needed = 3
        default: return false
        }
        guard continuations < needed else { return false }
        if continuations >= 1 {
            let second = bytes[i + 1]
            switch lead {
            case 0xE0: return (0xA0...0xBF).contains(second)
            case 0xED: return (0x80...0x9F).contains(second)
            case 0xF0: return (0x90...0xBF).contains(second)
            case 0xF4: return (0x80...0x8F).contains(second)
            default: return true
            }
        }
        return true
    }

    /// The byte of a `<0xXX>` token, or nil.
    static func byteFallbackValue(_ token: String) -> UInt8? {
        let u = Array(token.utf8)
        guard u.count == 6, u[0] == UInt8(ascii: "<"), u[1] == UInt8(ascii: "0"), u[2] == UInt8(ascii: "x"),
              u[5] == UInt8(ascii: ">") else { return nil }
        return UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16)
    }
}

/// The `post_processor` section: which special tokens `encode(addSpecialTokens: true)` adds.
struct PostProcessor: Sendable {
    /// Ids put before and after the sequence.
    var prefix: [Int] = []
    var suffix: [Int] = []

    static func parse(_ json: JSONObject) throws -> PostProcessor {
        switch try json.type() {
        case "ByteLevel":
            return PostProcessor()
        case "TemplateProcessing":
            let single = try json.array("single")
            let specials = try json.object("special_tokens")
            var result = PostProcessor()
            var seenSequence = false
            for (i, item) in single.enumerated() {
                let entry = try JSONObject(item, file: json.file, path: "\(json.path).single[\(i)]")
                if let special = try entry.optionalObject("SpecialToken") {
                    let name = try special.string("id")
                    let tok = try specials.object(name)
                    let ids = try tok.array("ids").map { v -> Int in
                        guard let n = v.intValue else { throw json.unsupported("special token ids") }
                        return n
                    }
                    if seenSequence { result.suffix += ids } else { result.prefix += ids }
                } else if let seq = try entry.optionalObject("Sequence") {
                    guard try seq.string("id") == "A", !seenSequence else {
                        throw json.unsupported("TemplateProcessing single sequence")
                    }
                    seenSequence = true
                } else {
                    throw json.unsupported("TemplateProcessing piece")
                }
            }
            return result
        case "RobertaProcessing", "BertProcessing":
            func id(_ key: String) throws -> Int {
                guard let pair = json.raw(key)?.arrayValue, pair.count == 2, let n = pair[1].intValue else {
                    throw json.unsupported("\(key) in post_processor")
                }
                return n
            }
            return PostProcessor(prefix: [try id("cls")], suffix: [try id("sep")])
        case "Sequence":
            var result = PostProcessor()
            for (i, item) in try json.array("processors").enumerated() {
                let p = try parse(JSONObject(item, file: json.file, path: "\(json.path).processors[\(i)]"))
                result.prefix = p.prefix + result.prefix
                result.suffix += p.suffix
            }
            return result
        case let other:
            throw TokenizerError(file: json.file, "unsupported post_processor \"\(other)\" at \(json.path)")
        }
    }
}
