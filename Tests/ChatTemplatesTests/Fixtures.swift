import Foundation
import JSONCoding

/// The committed tokenizer fixtures (this file's directory, then `../Fixtures/tokenizers`; no SwiftPM resources).
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/tokenizers")

    /// Parsed as the tokenizer parses its files: Foundation's parser drops U+FEFF inside strings on Linux.
    static func json(_ url: URL) throws -> JSON { try JSON.parse([UInt8](Data(contentsOf: url)), options: .lenient) }
}

/// Byte-exact string equality (Swift's `==` treats canonically equivalent strings as equal).
func sameBytes(_ a: String, _ b: String) -> Bool { Array(a.utf8) == Array(b.utf8) }

/// A readable rendering of a string with escapes, for failure messages.
func show(_ s: String) -> String { s.debugDescription }
