import Foundation
import JSONCoding
import Testing
@testable import Grammar
import Tokenization

/// The per-step cost of a token mask, on the demo model's vocabulary (4,096 byte-level tokens) and
/// on a synthetic 151,936-token vocabulary (Qwen3's size: the demo tokens plus concatenations of
/// two of them). Walks a JSON document token by token as a model would emit it and times each
/// step's mask, cold (computed) and through the per-state memo the server keeps.
/// Run with `scripts/bench_grammar.sh` (MOE_BENCH_GRAMMAR=1); prints one JSON line per vocabulary.
@Suite struct GrammarMaskBenchmark {
    static let enabled = ProcessInfo.processInfo.environment["MOE_BENCH_GRAMMAR"] == "1"

    static var demoDirectory: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("DemoModel")
    }

    /// The demo vocabulary's bytes also drive a correctness check that always runs: on real
    /// byte-level tokens (partial UTF-8 included), the mask equals token-by-token trial.
    @Test func demoVocabularyMaskEqualsTrial() throws {
        let tokenizer = try Tokenizer.load(directory: Self.demoDirectory)
        let bytes = (0..<tokenizer.vocabularySize).map { tokenizer.tokenBytes($0) }
        let trie = TokenTrie(vocabularySize: bytes.count, tokenBytes: { bytes[$0] })
        let grammar = try GBNFParser.parse(JSONSchemaGrammar.anyObjectGBNF)
        var m = GrammarMatcher(grammar: grammar)
        let ids = tokenizer.encode(#"{"name": "Zoë", "list": [1, 2.5, true], "nested": {"x": null}}"#, addSpecialTokens: false)
        for id in ids.prefix(12) {
            let mask = trie.allowedTokens(m, endTokens: tokenizer.eosTokenIds)
            for (token, b) in bytes.enumerated() {
                guard let b else { #expect(!mask.containsToken(token) || tokenizer.eosTokenIds.contains(token)); continue }
                var copy = m
                let ok = copy.accept(bytes: b)
                #expect(mask.containsToken(token) == ok, "token \(token)")
            }
            #expect(mask.containsToken(id))
            do { let ok = m.accept(bytes: bytes[id]!); #expect(ok) }
        }
    }

    @Test(.enabled(if: enabled)) func maskCostPerStep() throws {
        let tokenizer = try Tokenizer.load(directory: Self.demoDirectory)
        let demo = (0..<tokenizer.vocabularySize).map { tokenizer.tokenBytes($0) }
        var large = demo
        var rng = SplitMix(seed: 7)
        let words = demo.compactMap { $0 }
        while large.count < 151_936 { large.append(words[rng.next(words.count)] + words[rng.next(words.count)]) }
        let schema = try JSON.parse(Array(#"""
        {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
         "tags": {"type": "array", "items": {"type": "string"}}, "address": {"type": "object",
         "properties": {"street": {"type": "string"}, "city": {"type": "string"}}, "required": ["street", "city"]}},
         "required": ["name", "age", "tags", "address"]}
        """#.utf8))
        let grammar = try GBNFParser.parse(try JSONSchemaGrammar.gbnf(for: schema))
        let document = #"{"name": "Ada Lovelace, Countess of Lovelace", "age": 36, "tags": ["mathematician", "writer", "analyst"], "address": {"street": "St James's Square 12", "city": "London"}}"#
        let ids = tokenizer.encode(document, addSpecialTokens: false)
        for (name, vocabulary) in [("demo-4096", demo), ("synthetic-151936", large)] {
            let buildStart = DispatchTime.now().uptimeNanoseconds
            let trie = TokenTrie(vocabularySize: vocabulary.count, tokenBytes: { vocabulary[$0] })
            let buildMs = Double(DispatchTime.now().uptimeNanoseconds - buildStart) / 1e6
            // 1. The matcher alone (stack sets rebuilt at every trie node): the naive cost.
            var naive: [Double] = []
            var m = GrammarMatcher(grammar: grammar)
            for id in ids.prefix(name.hasPrefix("demo") ? ids.count : 12) {
                let t0 = DispatchTime.now().uptimeNanoseconds
                let mask = trie.allowedTokens(m, endTokens: tokenizer.eosTokenIds)
                naive.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
                #expect(mask.containsToken(id))
                _ = m.accept(bytes: demo[id]!)
            }
            // 2. The automaton (what the server runs), without and with the per-state mask memo.
            let automaton = GrammarAutomaton(grammar: grammar)
            var state = automaton.start
            var partial = PartialUTF8()
            var walked: [Double] = []
            var served: [Double] = []
            var memo: [Int64: [UInt64]] = [:]
            for id in ids {
                let key = Int64(state) << 32 | Int64(partial.remaining) << 24
                let t0 = DispatchTime.now().uptimeNanoseconds
                let mask = trie.allowedTokens(automaton, state: state, partial: partial, endTokens: tokenizer.eosTokenIds)
                let t1 = DispatchTime.now().uptimeNanoseconds
                walked.append(Double(t1 - t0) / 1e6)
                if partial.remaining == 0, let hit = memo[key] {
                    let t2 = DispatchTime.now().uptimeNanoseconds
                    _ = hit.withUnsafeBufferPointer { $0.count }
                    served.append(Double(DispatchTime.now().uptimeNanoseconds - t2) / 1e6)
                } else {
                    served.append(walked.last!)
                    if partial.remaining == 0 { memo[key] = mask }
                }
                #expect(mask.containsToken(id))
                guard let (next, p) = automaton.run(state, partial, demo[id]!) else { Issue.record("token \(id) refused"); break }
                state = next
                partial = p
            }
            func median(_ x: [Double]) -> Double { let s = x.sorted(); return s[s.count / 2] }
            func p90(_ x: [Double]) -> Double { let s = x.sorted(); return s[min(s.count - 1, s.count * 9 / 10)] }
            func f(_ x: Double) -> String { String(format: "%.3f", x) }
            print(#"{"vocabulary": "\#(name)", "tokens": \#(vocabulary.count), "trie_nodes": \#(trie.nodeCount), "trie_build_ms": \#(f(buildMs)), "steps": \#(ids.count), "naive_median_ms": \#(f(median(naive))), "automaton_median_ms": \#(f(median(walked))), "automaton_p90_ms": \#(f(p90(walked))), "automaton_max_ms": \#(f(walked.max() ?? 0)), "served_median_ms": \#(f(median(served))), "served_mean_ms": \#(f(served.reduce(0, +) / Double(served.count))), "states": \#(automaton.stateCount)}"#)
        }
    }
}

/// A tiny deterministic generator for the synthetic vocabulary.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next(_ bound: Int) -> Int {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Int((z ^ (z >> 31)) % UInt64(bound))
    }
}
