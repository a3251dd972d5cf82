import Foundation
import JSONCoding

/// Locates the committed template fixtures relative to this source file (no SwiftPM resources).
enum Fixtures {
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()
        .deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
        .appendingPathComponent("tokenizers")

    /// Parsed as the tokenizer parses its files: Foundation's parser drops U+FEFF inside strings on Linux.
    static func json(_ url: URL) throws -> JSON {
        try JSON.parse([UInt8](Data(contentsOf: url)), options: .lenient)
    }
}

/// Byte-exact string equality (Swift's `==` treats canonically equivalent strings as equal).
func sameBytes(_ a: String, _ b: String) -> Bool { Array(a.utf8) == Array(b.utf8) }

/// A readable rendering of a string with escapes, for failure messages.
func show(_ s: String) -> String { s.debugDescription }
