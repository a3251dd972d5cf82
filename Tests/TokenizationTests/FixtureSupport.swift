import Foundation
import JSONCoding
@testable import Tokenization

/// Locates the committed fixtures relative to this source file (no SwiftPM resources).
enum Fixtures {
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()
        .deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
        .appendingPathComponent("tokenizers")

    static func directory(_ style: String) -> URL { root.appendingPathComponent(style) }

    static func tokenizer(_ style: String) throws -> Tokenizer {
        try Tokenizer.load(directory: directory(style))
    }

    /// Parsed as the tokenizer parses its files: Foundation's parser drops U+FEFF inside strings on Linux.
    static func json(_ url: URL) throws -> JSON {
        try JSON.parse([UInt8](Data(contentsOf: url)), options: .lenient)
    }

    struct EncodingCase {
        var text: String
        var ids: [Int]
        var idsNoSpecial: [Int]
        var decoded: String
        var decodedSkipSpecial: String
    }

    struct DecodingCase {
        var ids: [Int]
        var text: String
        var textSkipSpecial: String
    }

    static func cases(_ style: String) throws -> (encodings: [EncodingCase], decodings: [DecodingCase]) {
        let root = try json(directory(style).appendingPathComponent("cases.json"))
        let enc = root["encodings"]!.arrayValue!.map { c in
            EncodingCase(
                text: c["text"]!.stringValue!, ids: ints(c["ids"]), idsNoSpecial: ints(c["ids_no_special"]),
                decoded: c["decoded"]!.stringValue!, decodedSkipSpecial: c["decoded_skip_special"]!.stringValue!)
        }
        let dec = root["decodings"]!.arrayValue!.map { c in
            DecodingCase(ids: ints(c["ids"]), text: c["text"]!.stringValue!,
                         textSkipSpecial: c["text_skip_special"]!.stringValue!)
        }
        return (enc, dec)
    }

    static func ints(_ value: JSON?) -> [Int] {
        value!.arrayValue!.map { $0.intValue! }
    }
}

/// Byte-exact string equality (Swift's `==` treats canonically equivalent strings as equal).
func sameBytes(_ a: String, _ b: String) -> Bool { Array(a.utf8) == Array(b.utf8) }

/// A readable rendering of a string with escapes, for failure messages.
func show(_ s: String) -> String { s.debugDescription }
