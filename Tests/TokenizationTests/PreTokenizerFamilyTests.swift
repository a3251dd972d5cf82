import Foundation
import Testing
@testable import Tokenization

/// DeepSeek-V3's Sequence of three Splits, DeepSeek-V2's five Splits and Digits, GLM-4.5's Llama-3-style Split and MiniMax-M2's o200k Split
/// (behaviour Removed, inverted) cut adversarial strings into exactly the pieces `tokenizers` makes
/// (pre_tokenizer_cases.json, scripts/make_deepseek_family_tokenizers.py): the strings mix every
/// character class these patterns tell apart, so a wrong backtracking step shows here even where the
/// small vocabulary would hide it in the ids.
@Suite struct PreTokenizerFamilyTests {
    static let styles = ["deepseek-v3", "glm-4.5", "minimax-m2", "deepseek-v2"]

    @Test(arguments: styles)
    func piecesMatchTokenizers(style: String) throws {
        let tokenizer = try Fixtures.tokenizer(style)
        let preTokenizer = try #require(tokenizer.preTokenizer)
        let cases = try Fixtures.json(Fixtures.directory(style).appendingPathComponent("pre_tokenizer_cases.json")).arrayValue!
        #expect(cases.count >= 300)
        var failures = 0
        for c in cases {
            let text = c["text"]!.stringValue!
            let expected = c["pieces"]!.arrayValue!.map { $0.stringValue! }
            let scalars = Array(text.unicodeScalars)
            let pieces = preTokenizer.apply(Pieces(scalars: scalars, ranges: scalars.isEmpty ? [] : [0..<scalars.count]))
            let got = pieces.ranges.map { r in String(String.UnicodeScalarView(pieces.scalars[r])) }
            if got.map({ Array($0.utf8) }) != expected.map({ Array($0.utf8) }) {
                failures += 1
                if failures <= 5 { Issue.record("\(style): \(show(text))\n got      \(got)\n expected \(expected)") }
            }
        }
        #expect(failures == 0, "\(style): \(failures) of \(cases.count) pre-tokenizations differ")
    }

    /// The patterns are recognised by their exact source: a pattern that differs by one character is
    /// refused at load with the supported list, not silently split another way.
    @Test func aNearMissPatternIsRefused() throws {
        let source = try String(contentsOf: Fixtures.directory("deepseek-v3").appendingPathComponent("tokenizer.json"), encoding: .utf8)
        let changed = source.replacingOccurrences(of: #"\\p{N}{1,3}"#, with: #"\\p{N}{1,4}"#)
        #expect(changed != source)
        #expect(throws: TokenizerError.self) { try Tokenizer(tokenizerJSON: Data(changed.utf8)) }
    }

    /// The same for DeepSeek-V2's trailing-space Split and for its letter class with one range cut short.
    @Test(arguments: [(#""Regex":"\\s+$""#, #""Regex":"\\s*$""#), ("\u{1E900}-\u{1E943}", "\u{1E900}-\u{1E942}")])
    func aNearMissDeepSeekV2PatternIsRefused(original: String, replacement: String) throws {
        let source = try String(contentsOf: Fixtures.directory("deepseek-v2").appendingPathComponent("tokenizer.json"), encoding: .utf8)
        _ = try Tokenizer(tokenizerJSON: Data(source.utf8))
        let changed = source.replacingOccurrences(of: original, with: replacement)
        #expect(changed != source)
        #expect(throws: TokenizerError.self) { try Tokenizer(tokenizerJSON: Data(changed.utf8)) }
    }
}
