import Foundation
import Testing
@testable import Grammar

/// The GBNF parser and the matcher as a pure state machine: sentences accepted, non-sentences
/// refused at the first bad character, completeness, and errors that say where.
@Suite struct GrammarEngineTests {
    func matcher(_ gbnf: String) throws -> GrammarMatcher { GrammarMatcher(grammar: try GBNFParser.parse(gbnf)) }

    func accepts(_ gbnf: String, _ text: String) throws -> Bool {
        var m = try matcher(gbnf)
        return m.accept(text) && m.isAccepting
    }

    @Test func alternativesAndLiterals() throws {
        let g = #"root ::= "yes" | "no""#
        #expect(try accepts(g, "yes"))
        #expect(try accepts(g, "no"))
        #expect(try !accepts(g, "ye"))
        var m = try matcher(g)
        do { let ok = m.accept("ya"); #expect(!ok) }
        do { let ok = m.accept("y"); #expect(ok) }  // a refused text leaves the state where it was
        do { let ok = m.accept("es"); #expect(ok) }
        #expect(m.isComplete)
    }

    @Test func classesRepetitionGroupsAndEscapes() throws {
        let g = """
        # a comment
        root ::= word ("," ws word){1,2} "\\n"?
        word ::= [a-z]+ | [^\\x00-\\x7F]   # letters, or one non-ASCII character
        ws ::= [ \\t]*
        """
        #expect(try accepts(g, "ab,cd"))
        #expect(try accepts(g, "ab, cd,\té\n"))
        #expect(try !accepts(g, "ab"))  // at least one more word
        #expect(try !accepts(g, "a,b,c,d"))  // at most two more
        #expect(try !accepts(g, "aB,c"))
        #expect(try accepts(#"root ::= "\"" . "\u00e9" [\]\-]"#, "\"xé]"))
        #expect(try accepts(#"root ::= "\"" . "\u00e9" [\]\-]"#, "\"😀é-"))
    }

    @Test func continuationLinesAndNesting() throws {
        let g = """
        root ::= a
          | b
        a ::= ( "x"
                "y" )
        b ::= "z"
        """
        #expect(try accepts(g, "xy"))
        #expect(try accepts(g, "z"))
        #expect(try !accepts(g, "x"))
    }

    @Test func completeOnlyWhenNothingCanFollow() throws {
        var m = try matcher(#"root ::= "a" "b"?"#)
        do { let ok = m.accept("a"); #expect(ok) }
        #expect(m.isAccepting && !m.isComplete)
        do { let ok = m.accept("b"); #expect(ok) }
        #expect(m.isComplete)
    }

    @Test func errorsSayWhatAndWhere() throws {
        func message(_ g: String) -> String {
            do { _ = try GBNFParser.parse(g); return "" } catch { return "\(error)" }
        }
        #expect(message(#"root ::= foo"#).contains("'foo' is used but never defined"))
        #expect(message("root ::= a\na ::= a \"x\" | \"y\"").contains("left-recursive"))
        #expect(message("root ::= e a\ne ::= \"\" | \"q\"\na ::= e root").contains("left-recursive"))
        #expect(message(#"start ::= "x""#).contains("no 'root' rule"))
        #expect(message("root ::= \"abc").contains("unterminated string literal"))
        #expect(message("root ::= \"a\"\nroot ::= \"b\"").contains("defined twice at line 2"))
        #expect(message(#"root ::= "a"{3,2}"#).contains("max < min"))
        #expect(message("root ::= \"a\" )").contains("line 1, column"))
    }

    @Test func partialUTF8AcrossAccepts() throws {
        var m = try matcher(#"root ::= "é" "x""#)
        do { let ok = m.accept(bytes: [0xC3]); #expect(ok) }
        #expect(!m.isAccepting)
        do { let ok = m.accept(bytes: [0x41]); #expect(!ok) }  // not a continuation byte
        do { let ok = m.accept(bytes: [0xA9, 0x78]); #expect(ok) }
        #expect(m.isComplete)
        var strict = try matcher(#"root ::= [^a]"#)
        for bad: [UInt8] in [[0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xFF]] {
            var copy = strict
            let ok = copy.accept(bytes: bad)
            #expect(!ok, "\(bad) is not strict UTF-8")
        }
        do { let ok = strict.accept(bytes: [0xF0, 0x9F, 0x98, 0x80]); #expect(ok) }
        var n = try matcher(#"root ::= "a""#)
        do { let ok = n.accept(bytes: [0xC3]); #expect(!ok) }  // no parse takes a code point from U+00C0...U+00FF
        // E0 (81) could only end as an overlong "a" (E0 81 A1): refused at once, not after a token
        // that leaves the sequence open (a byte-level vocabulary's 'à' + 'ģ' tokens did this).
        for open: [UInt8] in [[0xE0], [0xE0, 0x81], [0xF0, 0x80, 0x81], [0xED, 0xA0], [0xF4, 0x90]] {
            var copy = n
            let ok = copy.accept(bytes: open)
            #expect(!ok, "\(open) can only complete as invalid UTF-8")
        }
    }

    @Test func tokenMaskMatchesBruteForce() throws {
        // A toy byte-level vocabulary: every byte, some words, and "é" split across two tokens.
        var tokens: [[UInt8]] = (0..<256).map { [UInt8($0)] }
        for w in ["{\"", "\":", "true", "false", "null", " ", "\n", "12", "\"a\"", "é", "ab", "}"] { tokens.append(Array(w.utf8)) }
        let trie = TokenTrie(vocabularySize: tokens.count + 1, tokenBytes: { $0 < tokens.count ? tokens[$0] : nil })
        let eos = tokens.count
        let grammar = try GBNFParser.parse(JSONSchemaGrammar.anyObjectGBNF)
        var m = GrammarMatcher(grammar: grammar)
        let text = Array(#"{"ab": [1, true, "é"], "c": {}}"#.utf8)
        let automaton = GrammarAutomaton(grammar: grammar)
        var state = automaton.start
        for (step, byte) in text.enumerated() {
            let mask = trie.allowedTokens(m, endTokens: [eos])
            #expect(mask == trie.allowedTokens(automaton, state: state, partial: m.partial, endTokens: [eos]), "step \(step)")
            if let (next, _) = automaton.run(state, m.partial, [byte]) { state = next }
            for (id, bytes) in tokens.enumerated() {
                var copy = m
                let ok = copy.accept(bytes: bytes)
                #expect(mask.containsToken(id) == ok, "step \(step), token \(id) \(bytes)")
            }
            #expect(!mask.containsToken(eos))
            do { let ok = m.accept(bytes: [byte]); #expect(ok) }
        }
        #expect(m.isComplete)
        #expect(trie.allowedTokens(m, endTokens: [eos]).containsToken(eos))
    }
}
