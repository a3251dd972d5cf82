import Foundation
import JSONCoding
import Testing

/// The shared parser, serializer and escaper, tested directly (HTTP bodies use `.strict`,
/// tokenizer files `.lenient`).
@Suite struct JSONParsingTests {
    @Test func roundTripKeepsValuesAndKeyOrder() throws {
        let text = #"{"z":1,"a":[true,false,null,{"k":"v"}],"m":"x\"\n\u00e9\ud83d\ude00","d":-2.5e3,"e":{}}"#
        let json = try JSON.parse(text)
        #expect(json.objectValue?.map(\.0) == ["z", "a", "m", "d", "e"])
        #expect(json["m"] == .string("x\"\né😀"))
        #expect(json["d"] == .double(-2500))
        #expect(json["a"]?[3]?["k"] == .string("v"))
        let again = try JSON.parse(json.serialized())
        #expect(again == json)
        #expect(again.objectValue?.map(\.0) == ["z", "a", "m", "d", "e"])
        #expect(again.serialized() == json.serialized())
    }

    @Test func serializesCompactlyInMemberOrder() {
        let json = JSON.object([("b", .int(1)), ("a", .array([.double(1), .double(0.5), .null, .bool(true)])), ("s", .string("é"))])
        #expect(json.serialized() == #"{"b":1,"a":[1.0,0.5,null,true],"s":"é"}"#)
        #expect(JSON.double(.nan).serialized() == "null")
        #expect(JSON.double(1e300).serialized() == "1e+300")
    }

    @Test func unicodeEscapes() throws {
        #expect(try JSON.parse(#""\u0041\u00e9\u20AC""#) == .string("Aé€"))
        // A surrogate pair is one scalar (U+1F600).
        #expect(try JSON.parse(#""\uD83D\uDE00""#) == .string("\u{1F600}"))
        // Lone surrogates: an error naming them when strict, U+FFFD when lenient (as the tokenizer always read them).
        for lone in [#""\ud800""#, #""\udc00""#, #""a\ud800b""#, #""\ud800\u0041""#] {
            #expect(throws: JSONParseError.self) { try JSON.parse(lone) }
        }
        do {
            _ = try JSON.parse(#""\ud800x""#)
            Issue.record("a lone high surrogate was accepted")
        } catch let error as JSONParseError {
            #expect(error.description == #"invalid JSON at byte 1: lone high surrogate \ud800"#)
        }
        #expect(try JSON.parse(#""\ud800""#, options: .lenient) == .string("\u{FFFD}"))
        #expect(try JSON.parse(#""\udc00x""#, options: .lenient) == .string("\u{FFFD}x"))
        #expect(try JSON.parse(#""\ud800\u0041""#, options: .lenient) == .string("\u{FFFD}A"))
        #expect(throws: JSONParseError.self) { try JSON.parse(#""\u12G4""#) }
        #expect(throws: JSONParseError.self) { try JSON.parse(#""\u12""#) }
    }

    @Test func rawControlCharactersAndInvalidUTF8() throws {
        let control: [UInt8] = [0x22, 0x61, 0x09, 0x62, 0x22]  // "a<TAB>b", the tab unescaped
        #expect(throws: JSONParseError.self) { try JSON.parse(control) }
        #expect(try JSON.parse(control, options: .lenient) == .string("a\tb"))
        let invalid: [UInt8] = [0x22, 0x61, 0xFF, 0x22]
        #expect(throws: JSONParseError.self) { try JSON.parse(invalid) }
        #expect(try JSON.parse(invalid, options: .lenient) == .string("a\u{FFFD}"))
        // U+FEFF inside a string survives (Foundation's parser drops it on Linux; vocabularies hold it).
        #expect(try JSON.parse("\"\u{FEFF}x\"") == .string("\u{FEFF}x"))
        // A leading byte order mark is skipped.
        #expect(try JSON.parse([0xEF, 0xBB, 0xBF] + Array("[1]".utf8)) == .array([.int(1)]))
    }

    @Test func deepNestingIsRejectedWithAClearError() throws {
        let ok = String(repeating: "[", count: 128) + String(repeating: "]", count: 128)
        #expect(throws: Never.self) { try JSON.parse(ok) }
        let deep = String(repeating: "[", count: 129) + String(repeating: "]", count: 129)
        do {
            _ = try JSON.parse(deep)
            Issue.record("129 levels were accepted")
        } catch let error as JSONParseError {
            #expect(error.description == "invalid JSON at byte 128: nesting deeper than 128 levels")
        }
        // A hostile body far deeper than the stack could recurse fails the same way, promptly.
        let hostile = Array(repeating: UInt8(ascii: "["), count: 1_000_000)
        #expect(throws: JSONParseError.self) { try JSON.parse(hostile, options: .lenient) }
        let objects = String(repeating: #"{"a":"#, count: 600) + "1" + String(repeating: "}", count: 600)
        #expect(throws: JSONParseError.self) { try JSON.parse(objects, options: .lenient) }
        #expect(throws: Never.self) { try JSON.parse(objects, options: JSONParseOptions(maxDepth: 600)) }
    }

    @Test func sizeLimit() throws {
        let options = JSONParseOptions(maxBytes: 8)
        #expect(try JSON.parse("[1,2,3]", options: options) == .array([.int(1), .int(2), .int(3)]))
        do {
            _ = try JSON.parse("[1,2,3,4]", options: options)
            Issue.record("a document over the limit was accepted")
        } catch let error as JSONParseError {
            #expect(error.reason == "document of 9 bytes is larger than the limit of 8")
        }
    }

    @Test func numbers() throws {
        #expect(try JSON.parse("0") == .int(0))
        #expect(try JSON.parse("-0") == .int(0))
        #expect(try JSON.parse("123456789012345678") == .int(123_456_789_012_345_678))
        // Int64 ids and seeds stay exact at the extremes.
        #expect(try JSON.parse("9223372036854775807").intValue == Int.max)
        #expect(try JSON.parse("-9223372036854775808").intValue == Int.min)
        if case .int = try JSON.parse("9223372036854775807") {} else { Issue.record("Int.max is not an int") }
        // Beyond Int: the nearest double, as JavaScript reads it.
        #expect(try JSON.parse("9223372036854775808") == .double(9_223_372_036_854_775_808))
        #expect(try JSON.parse("1.5") == .double(1.5))
        #expect(try JSON.parse("-2E-3") == .double(-0.002))
        #expect(try JSON.parse("1e2") == .double(100))
        if case .double = try JSON.parse("1e2") {} else { Issue.record("1e2 is not a double") }
        #expect(try JSON.parse("0.1").doubleValue == 0.1)
        #expect(try JSON.parse("2.0").intValue == 2)
        #expect(try JSON.parse("2.5").intValue == nil)
        for bad in ["01", "-", "1.", ".5", "1e", "1e+", "+1", "0x10", "--1", "1.2.3", "NaN", "Infinity"] {
            #expect(throws: JSONParseError.self, "\(bad)") { try JSON.parse(bad) }
        }
    }

    @Test func duplicateKeysAreKeptAndTheLastWins() throws {
        let json = try JSON.parse(#"{"a":1,"b":2,"a":3}"#)
        #expect(json.objectValue?.map(\.0) == ["a", "b", "a"])
        #expect(json["a"] == .int(3))
        #expect(json.serialized() == #"{"a":1,"b":2,"a":3}"#)
        #expect(json != .object([("b", .int(2)), ("a", .int(3))]))  // member counts differ
        #expect(try JSON.parse(#"{"b":2,"a":3}"#) == .object([("a", .int(3)), ("b", .int(2))]))
    }

    @Test func equalityIsStructural() {
        #expect(JSON.int(1) == .double(1))
        #expect(JSON.int(1) != .string("1"))
        #expect(JSON.object([("a", .null), ("b", .bool(true))]) == .object([("b", .bool(true)), ("a", .null)]))
        #expect(JSON.array([.int(1), .int(2)]) != .array([.int(2), .int(1)]))
    }

    @Test func invalidDocumentsNameTheOffset() {
        let cases: [(String, String)] = [
            ("", "invalid JSON at byte 0: unexpected end of input"),
            ("{", "invalid JSON at byte 1: expected a string key"),
            ("[1,]", "invalid JSON at byte 3: unexpected character ']'"),
            (#"{"a" 1}"#, "invalid JSON at byte 5: expected ':'"),
            ("[1 2]", "invalid JSON at byte 3: expected ',' or ']'"),
            (#"{"a":1 "b":2}"#, "invalid JSON at byte 7: expected ',' or '}'"),
            ("{}{}", "invalid JSON at byte 2: unexpected data after the JSON value"),
            ("nul", "invalid JSON at byte 0: expected 'null'"),
            ("tru", "invalid JSON at byte 0: expected 'true'"),
            (#""abc"#, "invalid JSON at byte 4: unterminated string"),
            (#""\x""#, #"invalid JSON at byte 3: invalid escape '\x'"#),
            ("{1:2}", "invalid JSON at byte 1: expected a string key"),
            ("'a'", "invalid JSON at byte 0: unexpected character '''"),
        ]
        for (text, message) in cases {
            do {
                _ = try JSON.parse(text)
                Issue.record("\(text) was accepted")
            } catch let error as JSONParseError {
                #expect(error.description == message, "\(text)")
            } catch { Issue.record("\(error)") }
        }
        #expect(throws: JSONParseError.self) { try JSON.parse([0xC3]) }
    }
}

@Suite struct JSONEscapingTests {
    @Test func minimalMatchesPythonJSONDumps() {
        // json.dumps("q\"b\\\b\f\n\r\t\x01\x1f\x7f\u2028é😀", ensure_ascii=False)
        let s = "q\"b\\\u{8}\u{C}\n\r\t\u{1}\u{1F}\u{7F}\u{2028}é😀"
        #expect(JSON.quoted(s, escaping: .minimal) == "\"q\\\"b\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\u{7F}\u{2028}é😀\"")
    }

    @Test func lineSafeEscapesLineTerminatorsAndDEL() {
        #expect(JSON.quoted("a\u{2028}b\u{2029}c\u{7F}\n") == "\"a\\u2028b\\u2029c\\u007f\\n\"")
        #expect(JSON.string("a\u{1}b").serialized() == "\"a\\u0001b\"")
        #expect(JSON.quoted("plain ascii and é") == "\"plain ascii and é\"")
        // U+20AC starts with the same UTF-8 byte as U+2028 but is not escaped.
        #expect(JSON.quoted("€") == "\"€\"")
    }

    @Test func everyEscapedStringParsesBack() throws {
        var scalars: [Unicode.Scalar] = (0..<0x80).compactMap(Unicode.Scalar.init)
        scalars += ["\u{2028}", "\u{2029}", "\u{FEFF}", "\u{FFFD}", "\u{10FFFF}", "\u{1F600}"]
        var s = ""
        s.unicodeScalars.append(contentsOf: scalars)
        for escaping in [JSONStringEscaping.minimal, .lineSafe] {
            var out = ""
            JSON.appendQuoted(s, to: &out, escaping: escaping)
            #expect(try JSON.parse(out) == .string(s))
        }
    }
}

/// `JSON` inside `Codable` documents (the expert store's manifest embeds config.json so).
@Suite struct JSONCodableTests {
    struct Document: Codable, Equatable {
        var formatVersion: Int
        var config: JSON
    }

    @Test func aSubtreeSurvivesACodableRoundTripWithItsKeysUntouched() throws {
        let config = try JSON.parse(#"{"hidden_size": 32, "rope_theta": 1e6, "archs": ["A"], "on": true, "off": null, "pi": 3.5, "big": 9007199254740993}"#)
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let data = try encoder.encode(Document(formatVersion: 1, config: config))
        let text = String(decoding: data, as: UTF8.self)
        // The document's own keys follow the strategy; the subtree's keys are data and stay.
        #expect(text.contains("\"format_version\"") && text.contains("\"hidden_size\"") && !text.contains("hiddenSize"))
        let back = try decoder.decode(Document.self, from: data)
        #expect(back == Document(formatVersion: 1, config: config))
        // Integers stay exact (beyond 2^53), booleans stay booleans, members come back sorted by key.
        #expect(back.config["big"] == .int(9_007_199_254_740_993))
        #expect(back.config["on"] == .bool(true) && back.config["off"] == .null && back.config["pi"] == .double(3.5))
        #expect(back.config.objectValue?.map(\.0) == ["archs", "big", "hidden_size", "off", "on", "pi", "rope_theta"])
    }
}
