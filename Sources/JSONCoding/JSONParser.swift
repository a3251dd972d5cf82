/// Limits and strictness of one parse.
public struct JSONParseOptions: Sendable {
    /// Deepest nesting of arrays and objects accepted. The parser recurses once per level, so this
    /// bounds its stack use whatever the input: a hostile `[[[[…` fails with a clear error.
    public var maxDepth: Int
    /// Largest document accepted, in bytes.
    public var maxBytes: Int
    /// Whether strings must be exactly RFC 8259: raw control characters, lone surrogate escapes and
    /// invalid UTF-8 are errors. When false they are kept (controls) or replaced by U+FFFD, as the
    /// tokenizer loader always did, so a slightly malformed tokenizer file still loads.
    public var strictStrings: Bool

    /// - Parameters:
    ///   - maxDepth: deepest nesting accepted (128 by default, far beyond any real request).
    ///   - maxBytes: largest document accepted.
    ///   - strictStrings: reject instead of repair malformed strings.
    public init(maxDepth: Int = 128, maxBytes: Int = .max, strictStrings: Bool = true) {
        self.maxDepth = maxDepth
        self.maxBytes = maxBytes
        self.strictStrings = strictStrings
    }

    /// For untrusted input (HTTP bodies, configuration): depth 128, strict strings.
    public static let strict = JSONParseOptions()
    /// For model files (tokenizer.json, tokenizer_config.json, template data): depth 512,
    /// malformed strings repaired rather than rejected.
    public static let lenient = JSONParseOptions(maxDepth: 512, strictStrings: false)
}

/// Why a document is not valid JSON.
public struct JSONParseError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Byte offset of the problem.
    public let offset: Int
    /// What was wrong or expected.
    public let reason: String
    /// One line, e.g. `invalid JSON at byte 12: expected ':'`.
    public var description: String { "invalid JSON at byte \(offset): \(reason)" }

    /// - Parameters:
    ///   - offset: byte offset of the problem.
    ///   - reason: what was wrong or expected.
    public init(offset: Int, reason: String) {
        self.offset = offset
        self.reason = reason
    }
}

extension JSON {
    /// Parses one JSON document (RFC 8259) from UTF-8 bytes; a leading byte order mark is skipped.
    /// Errors name the byte offset so a client or a file's author can find the mistake.
    public static func parse(_ bytes: [UInt8], options: JSONParseOptions = .strict) throws -> JSON {
        guard bytes.count <= options.maxBytes else {
            throw JSONParseError(offset: options.maxBytes,
                                 reason: "document of \(bytes.count) bytes is larger than the limit of \(options.maxBytes)")
        }
        return try bytes.withUnsafeBufferPointer { buffer in
            var parser = JSONParser(bytes: buffer, options: options)
            return try parser.parseDocument()
        }
    }

    /// Parses a string holding one JSON document.
    public static func parse(_ text: String, options: JSONParseOptions = .strict) throws -> JSON {
        try parse(Array(text.utf8), options: options)
    }
}

/// A recursive-descent parser over a borrowed buffer; `options.maxDepth` bounds the recursion.
private struct JSONParser {
    let bytes: UnsafeBufferPointer<UInt8>
    let options: JSONParseOptions
    var index = 0
    var depth = 0

    init(bytes: UnsafeBufferPointer<UInt8>, options: JSONParseOptions) {
        self.bytes = bytes
        self.options = options
    }

    mutating func parseDocument() throws -> JSON {
        // A UTF-8 byte order mark, which some Windows tools prepend.
        if bytes.count >= 3, bytes[0] == 0xEF, bytes[1] == 0xBB, bytes[2] == 0xBF { index = 3 }
        skipWhitespace()
        let value = try parseValue()
        skipWhitespace()
        guard index == bytes.count else { throw fail("unexpected data after the JSON value") }
        return value
    }

    func fail(_ reason: String) -> JSONParseError { JSONParseError(offset: index, reason: reason) }

    mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    /// A value starting at `index` (whitespace already skipped).
    mutating func parseValue() throws -> JSON {
        guard index < bytes.count else { throw fail("unexpected end of input") }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        case let c where c < 0x80: throw fail("unexpected character '\(Character(Unicode.Scalar(c)))'")
        case let c: throw fail("unexpected byte 0x\(String(c, radix: 16))")
        }
    }

    mutating func expectLiteral(_ literal: StaticString) throws {
        let count = literal.utf8CodeUnitCount
        var matches = index + count <= bytes.count
        var i = 0
        while matches && i < count {
            matches = bytes[index + i] == literal.utf8Start[i]
            i += 1
        }
        guard matches else { throw fail("expected '\(literal)'") }
        index += count
    }

    mutating func enter() throws {
        depth += 1
        if depth > options.maxDepth { throw fail("nesting deeper than \(options.maxDepth) levels") }
    }

    mutating func parseObject() throws -> JSON {
        try enter()
        defer { depth -= 1 }
        index += 1
        var members: [(String, JSON)] = []
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") { index += 1; return .object(members) }
        while true {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
            let key = try parseString()
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw fail("expected ':'") }
            index += 1
            skipWhitespace()
            members.append((key, try parseValue()))
            skipWhitespace()
            guard index < bytes.count else { throw fail("unexpected end of input in an object") }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            if bytes[index] == UInt8(ascii: "}") { index += 1; return .object(members) }
            throw fail("expected ',' or '}'")
        }
    }

    mutating func parseArray() throws -> JSON {
        try enter()
        defer { depth -= 1 }
        index += 1
        var items: [JSON] = []
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
        while true {
            skipWhitespace()
            items.append(try parseValue())
            skipWhitespace()
            guard index < bytes.count else { throw fail("unexpected end of input in an array") }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            if bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
            throw fail("expected ',' or ']'")
        }
    }

    mutating func parseHex4() throws -> UInt32 {
        guard index + 4 <= bytes.count else { throw fail("truncated \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[index]
            let digit: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw fail("invalid hex digit in \\u escape")
            }
            value = value * 16 + digit
            index += 1
        }
        return value
    }

    /// Text of raw bytes: validated when strict, repaired (U+FFFD) otherwise.
    func makeString(_ raw: UnsafeBufferPointer<UInt8>, startingAt offset: Int) throws -> String {
        guard options.strictStrings else { return String(decoding: raw, as: UTF8.self) }
        guard let s = String(validating: raw, as: UTF8.self) else {
            throw JSONParseError(offset: offset, reason: "string is not valid UTF-8")
        }
        return s
    }

    mutating func parseString() throws -> String {
        let opening = index
        index += 1
        let start = index
        // Fast path: a string without escapes becomes a String straight from the input.
        while index < bytes.count {
            let c = bytes[index]
            if c == UInt8(ascii: "\"") {
                let s = try makeString(UnsafeBufferPointer(rebasing: bytes[start..<index]), startingAt: opening)
                index += 1
                return s
            }
            if c == UInt8(ascii: "\\") { break }
            if c < 0x20 && options.strictStrings { throw fail("control character in string") }
            index += 1
        }
        var buffer = Array(UnsafeBufferPointer(rebasing: bytes[start..<index]))
        while true {
            guard index < bytes.count else { throw fail("unterminated string") }
            let c = bytes[index]
            if c == UInt8(ascii: "\"") { index += 1; break }
            if c < 0x20 && options.strictStrings { throw fail("control character in string") }
            if c != UInt8(ascii: "\\") {
                // Copy the run of plain bytes up to the next quote, escape or control in one go.
                let run = index
                index += 1
                while index < bytes.count, bytes[index] != UInt8(ascii: "\""), bytes[index] != UInt8(ascii: "\\"), bytes[index] >= 0x20 {
                    index += 1
                }
                buffer.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[run..<index]))
                continue
            }
            index += 1
            guard index < bytes.count else { throw fail("unterminated string") }
            let e = bytes[index]
            index += 1
            switch e {
            case UInt8(ascii: "\""): buffer.append(0x22)
            case UInt8(ascii: "\\"): buffer.append(0x5C)
            case UInt8(ascii: "/"): buffer.append(0x2F)
            case UInt8(ascii: "b"): buffer.append(0x08)
            case UInt8(ascii: "f"): buffer.append(0x0C)
            case UInt8(ascii: "n"): buffer.append(0x0A)
            case UInt8(ascii: "r"): buffer.append(0x0D)
            case UInt8(ascii: "t"): buffer.append(0x09)
            case UInt8(ascii: "u"): buffer.append(contentsOf: UTF8.encode(try parseEscapedScalar())!)
            case let e where e >= 0x20 && e < 0x80: throw fail("invalid escape '\\\(Character(Unicode.Scalar(e)))'")
            default: throw fail("invalid escape")
            }
        }
        return try buffer.withUnsafeBufferPointer { try makeString($0, startingAt: opening) }
    }

    /// The scalar of a `\uXXXX` escape (the `\u` consumed), joining a surrogate pair. A lone
    /// surrogate is an error when strict and U+FFFD otherwise.
    mutating func parseEscapedScalar() throws -> Unicode.Scalar {
        let escapeStart = index - 2
        let value = try parseHex4()
        if (0xDC00..<0xE000).contains(value) {
            guard !options.strictStrings else {
                throw JSONParseError(offset: escapeStart, reason: "lone low surrogate \\u\(String(value, radix: 16))")
            }
            return "\u{FFFD}"
        }
        guard (0xD800..<0xDC00).contains(value) else { return Unicode.Scalar(value)! }
        // A high surrogate must be followed by an escaped low surrogate.
        if index + 6 <= bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") {
            let save = index
            index += 2
            let low = try parseHex4()
            if (0xDC00..<0xE000).contains(low) {
                return Unicode.Scalar(0x10000 + ((value - 0xD800) << 10) + (low - 0xDC00))!
            }
            // Not a pair: the next escape is read on its own.
            index = save
        }
        guard !options.strictStrings else {
            throw JSONParseError(offset: escapeStart, reason: "lone high surrogate \\u\(String(value, radix: 16))")
        }
        return "\u{FFFD}"
    }

    /// A number per RFC 8259: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    mutating func parseNumber() throws -> JSON {
        let start = index
        let negative = bytes[index] == UInt8(ascii: "-")
        if negative { index += 1 }
        let intStart = index
        // Up to 18 digits cannot overflow Int64, so small integers are accumulated directly.
        var magnitude = 0
        while index < bytes.count, bytes[index] &- UInt8(ascii: "0") < 10 {
            magnitude = magnitude &* 10 &+ Int(bytes[index] &- UInt8(ascii: "0"))
            index += 1
        }
        let intDigits = index - intStart
        guard intDigits > 0 else { throw fail("invalid number: expected a digit") }
        guard !(intDigits > 1 && bytes[intStart] == UInt8(ascii: "0")) else {
            throw JSONParseError(offset: intStart, reason: "invalid number: leading zero")
        }
        var isInteger = true
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            isInteger = false
            index += 1
            guard skipDigits() > 0 else { throw fail("invalid number: expected a digit after '.'") }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            isInteger = false
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard skipDigits() > 0 else { throw fail("invalid number: expected a digit in the exponent") }
        }
        if isInteger && intDigits <= 18 { return .int(negative ? -magnitude : magnitude) }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
        // Integers beyond Int's range become the nearest double, as JavaScript reads them.
        if isInteger, let i = Int(text) { return .int(i) }
        guard let d = Double(text) else { throw JSONParseError(offset: start, reason: "invalid number \(text)") }
        return .double(d)
    }

    mutating func skipDigits() -> Int {
        let s = index
        while index < bytes.count, bytes[index] &- UInt8(ascii: "0") < 10 { index += 1 }
        return index - s
    }
}
