import Foundation
import Testing
@testable import Tokenization

/// `StreamingDetokenizer` on hostile id streams: every step costs O(1), pieces are the ones the
/// unbounded window gave on valid streams, and the concatenation still equals `decode`.
@Suite struct StreamingDetokenizerTests {
    static let styles = EncodeDecodeTests.styles

    /// The pieces of a whole stream, `flush()` last.
    static func pieces(_ tokenizer: Tokenizer, _ ids: [Int], skip: Bool) -> (pieces: [String], work: Int) {
        var stream = StreamingDetokenizer(tokenizer: tokenizer, skipSpecialTokens: skip)
        var out = ids.map { stream.push($0) }
        out.append(stream.flush())
        return (out, stream.decodedIds)
    }

    /// Valid streams (those whose text has no U+FFFD) are cut into exactly the pieces the previous,
    /// unbounded window gave (kept below as the reference).
    @Test(arguments: styles)
    func piecesOfValidStreamsAreUnchanged(style: String) throws {
        let tokenizer = try Fixtures.tokenizer(style)
        let (cases, decodings) = try Fixtures.cases(style)
        var compared = 0, failures = 0
        for ids in cases.map(\.ids) + decodings.map(\.ids) {
            for skip in [false, true] where !tokenizer.decode(ids, skipSpecialTokens: skip).contains("\u{FFFD}") {
                compared += 1
                var reference = UnboundedWindowDetokenizer(tokenizer: tokenizer, skipSpecialTokens: skip)
                var expected = ids.map { reference.push($0) }
                expected.append(reference.flush())
                let got = Self.pieces(tokenizer, ids, skip: skip).pieces
                if got.map({ Array($0.utf8) }) != expected.map({ Array($0.utf8) }) {
                    failures += 1
                    if failures <= 3 { Issue.record("\(style) \(ids): pieces \(got) expected \(expected)") }
                }
            }
        }
        #expect(compared >= 400)
        #expect(failures == 0)
    }

    /// `endsInUnfinishedUTF8` says exactly when more bytes can still change the decoding's last U+FFFD,
    /// checked against Swift's own UTF-8 decoder on every short sequence over bytes that matter.
    @Test func unfinishedUTF8AgreesWithTheDecoder() {
        let alphabet: [UInt8] = [0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0,
                                 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]
        let continuations: [UInt8] = [0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF]
        func decoded(_ b: [UInt8]) -> [UInt8] { Array(String(decoding: b, as: UTF8.self).utf8) }
        func extend(_ s: [[UInt8]], _ by: [UInt8]) -> [[UInt8]] { s.flatMap { prefix in by.map { prefix + [$0] } } }
        let ones = alphabet.map { [$0] }, twos = extend(ones, alphabet)
        let sequences = ones + twos + extend(twos, alphabet)
        let c1 = continuations.map { [$0] }, c2 = extend(c1, continuations)
        let suffixes = c1 + c2 + extend(c2, continuations)
        var mismatches = 0
        for s in sequences {
            let text = decoded(s)
            // Provisional: some continuation changes text already decoded (its last U+FFFD).
            let provisional = suffixes.contains { !decoded(s + $0).starts(with: text) }
            if Decoder.endsInUnfinishedUTF8(s[...]) != provisional {
                mismatches += 1
                if mismatches <= 5 { Issue.record("\(s.map { String($0, radix: 16) }): provisional \(provisional)") }
            }
        }
        #expect(sequences.count == 24 + 24 * 24 + 24 * 24 * 24)
        #expect(mismatches == 0)
    }

    /// Ids standing for single bytes in a byte-level vocabulary.
    static func byteIds(_ tokenizer: Tokenizer, _ bytes: [UInt8]) -> [Int] {
        bytes.map { tokenizer.tokenId(for: String(Character(ByteLevelTable.byteToScalar[Int($0)])))! }
    }

    static let n = 3000

    /// Real U+FFFD characters (EF BF BD) used to hold the whole window back: n² work.
    @Test func realReplacementCharactersGoOutAtOnce() throws {
        let tokenizer = try Fixtures.tokenizer("qwen2")
        let ids = Array(repeating: Self.byteIds(tokenizer, [0xEF, 0xBF, 0xBD]), count: Self.n).flatMap { $0 }
        let (pieces, work) = Self.pieces(tokenizer, ids, skip: false)
        #expect(pieces.joined() == tokenizer.decode(ids))
        #expect(pieces.filter { $0 == "\u{FFFD}" }.count == Self.n)
        #expect(work <= 8 * ids.count, "work \(work) for \(ids.count) ids")
    }

    /// Invalid bytes (lone continuation bytes, bytes that never occur in UTF-8) are final at once.
    @Test func invalidBytesGoOutAtOnce() throws {
        let tokenizer = try Fixtures.tokenizer("qwen2")
        let ids = Array(repeating: Self.byteIds(tokenizer, [0x80, 0xFF, 0xC0, 0xE2, 0x41]), count: Self.n).flatMap { $0 }
        let (pieces, work) = Self.pieces(tokenizer, ids, skip: false)
        #expect(pieces.joined() == tokenizer.decode(ids))
        #expect(pieces.prefix(5) == ["\u{FFFD}", "\u{FFFD}", "\u{FFFD}", "", "\u{FFFD}A"])
        #expect(work <= 8 * ids.count)
    }

    /// An unfinished character interrupted by ids that decode to nothing (unknown ids, skipped
    /// special tokens) is completed after them, as `decode` completes it, at O(1) per id.
    @Test(arguments: ["qwen2", "mistral"])
    func idsThatDecodeToNothingCostNothing(style: String) throws {
        let tokenizer = try Fixtures.tokenizer(style)
        let euro: [Int] = style == "qwen2"
            ? Self.byteIds(tokenizer, [0xE2, 0x82, 0xAC])
            : ["<0xE2>", "<0x82>", "<0xAC>"].map { tokenizer.tokenId(for: $0)! }
        let special = tokenizer.addedTokens.first { $0.special }!.id
        let nothing = Array(repeating: [tokenizer.vocabularySize + 3, special], count: Self.n).flatMap { $0 }
        let word = tokenizer.encode(" ok", addSpecialTokens: false)
        let ids = word + [euro[0]] + nothing + [euro[1]] + nothing + [euro[2]] + nothing + word
        let (pieces, work) = Self.pieces(tokenizer, ids, skip: true)
        #expect(pieces.joined() == tokenizer.decode(ids, skipSpecialTokens: true))
        #expect(pieces.joined().contains("€"))
        #expect(work <= 8 * ids.count, "work \(work) for \(ids.count) ids")
    }

    /// Long `<0xXX>` runs of a ByteFallback decoder, valid and invalid, are decoded once each.
    @Test func longByteRunsAreDecodedOnce() throws {
        let tokenizer = try Fixtures.tokenizer("mistral")
        let run = (0..<Self.n).map { tokenizer.tokenId(for: $0 % 3 == 0 ? "<0xFF>" : "<0xE2>")! }
        let word = tokenizer.encode(" ok", addSpecialTokens: false)
        let ids = run + word + run + word
        let (pieces, work) = Self.pieces(tokenizer, ids, skip: false)
        #expect(pieces.joined() == tokenizer.decode(ids))
        #expect(work <= 8 * ids.count, "work \(work) for \(ids.count) ids")
    }

    /// The cost per id does not grow with the stream: four times the ids, about four times the work.
    @Test(arguments: ["qwen2", "mistral"])
    func workIsLinearInTheIds(style: String) throws {
        let tokenizer = try Fixtures.tokenizer(style)
        let bytes: [Int] = style == "qwen2"
            ? Self.byteIds(tokenizer, [0xEF, 0xBF, 0xBD, 0xE2, 0x80])
            : ["<0xEF>", "<0xBF>", "<0xBD>", "<0xE2>", "<0x80>"].map { tokenizer.tokenId(for: $0)! }
        let special = tokenizer.addedTokens.first { $0.special }!.id
        let unit = bytes + [tokenizer.vocabularySize + 1, special] + tokenizer.encode(" ok", addSpecialTokens: false)
        let w1 = Self.pieces(tokenizer, Array(repeating: unit, count: 1000).flatMap { $0 }, skip: true).work
        let w4 = Self.pieces(tokenizer, Array(repeating: unit, count: 4000).flatMap { $0 }, skip: true).work
        #expect(w1 > 0)
        #expect(Double(w4) <= 4.2 * Double(w1), "\(w1) → \(w4)")
    }
}

/// The previous `StreamingDetokenizer`, whose window grew without bound while its text ended in
/// U+FFFD: the reference for the pieces of valid streams.
private struct UnboundedWindowDetokenizer {
    let tokenizer: Tokenizer
    let skipSpecialTokens: Bool
    var window: [Int] = []
    var contextCount = 0
    var contextText: [UInt8] = []
    var allIds: [Int] = []
    var emitted: [UInt8] = []

    init(tokenizer: Tokenizer, skipSpecialTokens: Bool) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    mutating func push(_ id: Int) -> String {
        window.append(id)
        allIds.append(id)
        if tokenizer.isPendingByte(id) { return "" }
        let text = Array(tokenizer.decode(window, skipSpecialTokens: skipSpecialTokens).utf8)
        let fffd: [UInt8] = [0xEF, 0xBF, 0xBD]
        guard text.count > contextText.count, !text.suffix(3).elementsEqual(fffd),
              text.starts(with: contextText) else { return "" }
        let piece = Array(text[contextText.count...])
        window.removeFirst(contextCount)
        contextCount = window.count
        contextText = Array(tokenizer.decode(window, skipSpecialTokens: skipSpecialTokens).utf8)
        emitted += piece
        return String(decoding: piece, as: UTF8.self)
    }

    mutating func flush() -> String {
        let full = Array(tokenizer.decode(allIds, skipSpecialTokens: skipSpecialTokens).utf8)
        if full.starts(with: emitted) { return String(decoding: full[emitted.count...], as: UTF8.self) }
        let text = Array(tokenizer.decode(window, skipSpecialTokens: skipSpecialTokens).utf8)
        guard text.count > contextText.count, text.starts(with: contextText) else { return "" }
        return String(decoding: text[contextText.count...], as: UTF8.self)
    }
}
