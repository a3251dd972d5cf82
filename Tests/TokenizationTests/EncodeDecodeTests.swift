import Foundation
import Testing
@testable import Tokenization

/// Exact agreement with Hugging Face `tokenizers` on committed fixtures (see
/// scripts/make_tokenizer_fixtures.py). The `-heldout` styles use tokenizers trained on another corpus
/// slice with other options, and strings from another seed: nothing in this module was tuned on them.
@Suite struct EncodeDecodeTests {
    static let styles = [
        "qwen2", "neox", "mistral", "mistral-metaspace",
        "qwen2-heldout", "neox-heldout", "mistral-heldout", "mistral-metaspace-heldout",
        // Made by scripts/make_deepseek_family_tokenizers.py; expected values from transformers' AutoTokenizer.
        "deepseek-v3", "glm-4.5", "minimax-m2", "deepseek-v2",
    ]

    @Test(arguments: styles)
    func encodeMatchesTokenizers(style: String) throws {
        let tokenizer = try Fixtures.tokenizer(style)
        let (cases, _) = try Fixtures.cases(style)
        #expect(cases.count >= 250 || style.contains("-") && cases.count >= 200)
        var failures = 0
        for c in cases {
            let ids = tokenizer.encode(c.text)
            let plain = tokenizer.encode(c.text, addSpecialTokens: false)
            if ids != c.ids || plain != c.idsNoSpecial {
                failures += 1
                if failures <= 5 {
                    Issue.record("\(style): encode(\(show(c.text)))\n got      \(ids)\n expected \(c.ids)\n plain got \(plain)\n expected  \(c.idsNoSpecial)")
                }
            }
        }
        #expect(failures == 0, "\(style): \(failures) of \(cases.count) encodings differ")
    }

    @Test(arguments: styles)
    func decodeMatchesTokenizers(style: String) throws {
        let tokenizer = try Fixtures.tokenizer(style)
        let (cases, decodings) = try Fixtures.cases(style)
        var failures = 0
        func check(_ ids: [Int], skip: Bool, _ expected: String) {
            let got = tokenizer.decode(ids, skipSpecialTokens: skip)
            if !sameBytes(got, expected) {
                failures += 1
                if failures <= 5 {
                    Issue.record("\(style): decode(\(ids), skip: \(skip))\n got      \(show(got))\n expected \(show(expected))")
                }
            }
        }
        for c in cases {
            check(c.ids, skip: false, c.decoded)
            check(c.ids, skip: true, c.decodedSkipSpecial)
        }
        for d in decodings {
            check(d.ids, skip: false, d.text)
            check(d.ids, skip: true, d.textSkipSpecial)
        }
        #expect(failures == 0, "\(style): \(failures) decodings differ")
    }

    @Test(arguments: styles)
    func streamingConcatenationEqualsDecode(style: String) throws {
        let tokenizer = try Fixtures.tokenizer(style)
        let (cases, decodings) = try Fixtures.cases(style)
        var failures = 0
        let sequences = cases.map(\.ids) + decodings.map(\.ids)
        for ids in sequences {
            for skip in [false, true] {
                var stream = StreamingDetokenizer(tokenizer: tokenizer, skipSpecialTokens: skip)
                var text = ""
                for id in ids {
                    let piece = stream.push(id)
                    // A piece never ends inside a UTF-8 sequence: it is valid String content by construction,
                    // and must not end with a replacement character produced by an incomplete sequence.
                    text += piece
                }
                text += stream.flush()
                let expected = tokenizer.decode(ids, skipSpecialTokens: skip)
                if !sameBytes(text, expected) {
                    failures += 1
                    if failures <= 5 {
                        Issue.record("\(style): stream(\(ids)) = \(show(text)), decode = \(show(expected))")
                    }
                }
            }
        }
        #expect(failures == 0)
    }
}

/// The word cache is shared between threads: concurrent encodes must give the same ids.
@Suite struct ConcurrencyTests {
    @Test func concurrentEncodesAgree() throws {
        let tokenizer = try Fixtures.tokenizer("qwen2")
        let (cases, _) = try Fixtures.cases("qwen2")
        let failures = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            for (i, c) in cases.enumerated() where (i + worker) % 2 == 0 {
                if tokenizer.encode(c.text) != c.ids { failures.withLock { $0 += 1 } }
            }
        }
        #expect(failures.withLock { $0 } == 0)
    }
}

/// A minimal lock-protected box for test bookkeeping.
final class Mutex<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func withLock<R>(_ body: (inout Value) -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}
