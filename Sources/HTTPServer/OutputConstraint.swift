import Foundation
import Grammar
import InferenceEngine

/// The request fields that constrain the output's form, turned into one `Grammar`:
/// OpenAI's `response_format` (`text`, `json_object`, `json_schema`), and llama.cpp's `json_schema`
/// (a schema object) and `grammar` (GBNF text). At most one may constrain a request; a schema or
/// grammar that cannot be enforced is a 400 naming the field, never ignored.
enum OutputConstraint {
    /// The grammar the request's fields ask for, or nil for free text.
    static func grammar(_ f: RequestFields) throws -> Grammar? {
        var found: [(String, Grammar)] = []
        if let format = try f.object("response_format") {
            try format.rejectUnknown(["type", "json_schema", "schema"])
            guard let type = try format.string("type") else { throw APIError.invalidRequest("field 'response_format.type' is required") }
            switch type {
            case "text":
                break
            case "json_object":
                // llama.cpp also takes a schema here: {"type": "json_object", "schema": {...}}.
                if let schema = format.value("schema") {
                    found.append(("response_format", try compile(schema: schema, field: "response_format.schema")))
                } else {
                    found.append(("response_format", try compile(gbnf: JSONSchemaGrammar.anyObjectGBNF, field: "response_format")))
                }
            case "json_schema":
                guard let spec = try format.object("json_schema") else {
                    throw APIError.invalidRequest("field 'response_format.json_schema' is required for type 'json_schema'")
                }
                try spec.rejectUnknown(["name", "description", "schema", "strict"])
                // `strict` false or true: the grammar enforces the schema either way.
                _ = try spec.bool("strict")
                _ = try spec.string("name")
                let schema = spec.value("schema") ?? .object([])
                found.append(("response_format", try compile(schema: schema, field: "response_format.json_schema.schema")))
            default:
                throw APIError.invalidRequest("field 'response_format.type' must be 'text', 'json_object' or 'json_schema', got '\(type)'")
            }
        }
        if let schema = f.value("json_schema") {
            found.append(("json_schema", try compile(schema: schema, field: "json_schema")))
        }
        if let text = try f.string("grammar"), !text.isEmpty {
            found.append(("grammar", try compile(gbnf: text, field: "grammar")))
        }
        if found.count > 1 {
            throw APIError.invalidRequest("fields \(found.map { "'\($0.0)'" }.joined(separator: " and ")) both constrain the output; send one")
        }
        return found.first?.1
    }

    static func compile(schema: JSON, field: String) throws -> Grammar {
        let text: String
        do { text = try JSONSchemaGrammar.gbnf(for: schema) } catch let e as GrammarError {
            throw APIError.invalidRequest("field '\(field)': \(e.description)")
        }
        return try compile(gbnf: text, field: field)
    }

    static func compile(gbnf: String, field: String) throws -> Grammar {
        do { return try GBNFParser.parse(gbnf) } catch let e as GrammarError {
            throw APIError.invalidRequest("field '\(field)': \(e.description)")
        }
    }
}

/// A grammar as the engine's per-sequence token constraint: the mask of each step comes from the
/// vocabulary trie walked through the sequence's lazily built automaton, and is memoised per
/// automaton state (a JSON string's inside is one state however long it grows).
final class GrammarConstraint: TokenConstraint {
    private let automaton: GrammarAutomaton
    private var state: Int32
    private var partial = PartialUTF8()
    private let trie: TokenTrie
    private let tokenBytes: [[UInt8]?]
    private let endTokens: Set<Int>
    private var memo: [MaskKey: [UInt64]] = [:]

    struct MaskKey: Hashable {
        let state: Int32
        let partial: PartialUTF8
    }

    init(grammar: Grammar, vocabulary: GrammarVocabulary.Tables, endTokens: Set<Int>) {
        automaton = GrammarAutomaton(grammar: grammar)
        state = automaton.start
        trie = vocabulary.trie
        tokenBytes = vocabulary.bytes
        self.endTokens = endTokens
    }

    func constrain(_ logits: inout [Float]) -> Bool {
        let key = MaskKey(state: state, partial: partial)
        let mask: [UInt64]
        if let hit = memo[key] {
            mask = hit
        } else {
            mask = trie.allowedTokens(automaton, state: state, partial: partial, endTokens: endTokens)
            if memo.count >= 256 { memo.removeAll(keepingCapacity: true) }
            memo[key] = mask
        }
        var any = false
        let limit = min(logits.count, trie.vocabularySize)
        logits.withUnsafeMutableBufferPointer { l in
            mask.withUnsafeBufferPointer { m in
                for i in 0..<limit where m[i >> 6] & (1 << UInt64(i & 63)) == 0 { l[i] = -.infinity }
                for w in m where w != 0 { any = true; break }
            }
            for i in limit..<l.count { l[i] = -.infinity }
        }
        return any
    }

    func accept(_ token: Int) {
        guard !endTokens.contains(token), token >= 0, token < tokenBytes.count, let bytes = tokenBytes[token],
              let (next, p) = automaton.run(state, partial, bytes) else { return }
        state = next
        partial = p
    }

    var isComplete: Bool { partial.remaining == 0 && automaton.isClosed(state) && automaton.isAccepting(state) }
}

/// The vocabulary's trie and token bytes, built once per model on the first constrained request
/// (~0.1 s for 150k tokens) and shared by every sequence after.
public final class GrammarVocabulary: @unchecked Sendable {
    /// What constraints read.
    struct Tables: Sendable {
        let trie: TokenTrie
        let bytes: [[UInt8]?]
    }
    private let lock = NSLock()
    private var tables: Tables?
    private let build: @Sendable () -> Tables

    init(codec: any PromptCodec) {
        build = {
            let bytes = (0..<codec.vocabularySize).map { codec.bytes(ofToken: $0) }
            return Tables(trie: TokenTrie(vocabularySize: codec.vocabularySize, tokenBytes: { bytes[$0] }), bytes: bytes)
        }
    }

    func get() -> Tables {
        lock.lock()
        defer { lock.unlock() }
        if let tables { return tables }
        let t = build()
        tables = t
        return t
    }

    /// The engine-side factory for `grammar`: one fresh matcher per sequence.
    func factory(_ grammar: Grammar, endTokens: Set<Int>) -> TokenConstraintFactory {
        let tables = get()
        return TokenConstraintFactory { GrammarConstraint(grammar: grammar, vocabulary: tables, endTokens: endTokens) }
    }
}
