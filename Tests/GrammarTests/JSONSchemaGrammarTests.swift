import Foundation
import JSONCoding
import Testing
@testable import Grammar

/// JSON Schema → GBNF: the grammar accepts documents valid against the schema, refuses invalid
/// ones, and random walks through the grammar only ever produce valid documents.
@Suite struct JSONSchemaGrammarTests {
    func grammar(_ schema: String) throws -> Grammar {
        try GBNFParser.parse(try JSONSchemaGrammar.gbnf(for: try JSON.parse(Array(schema.utf8))))
    }

    func accepts(_ g: Grammar, _ text: String) -> Bool {
        var m = GrammarMatcher(grammar: g)
        return m.accept(text) && m.isAccepting
    }

    let person = """
    {"type": "object", "additionalProperties": false, "required": ["name", "age"],
     "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"},
                    "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
                    "ok": {"type": ["boolean", "null"]}}}
    """

    @Test func objectsFollowTheSchema() throws {
        let g = try grammar(person)
        #expect(accepts(g, #"{"name": "Ann", "age": 42}"#))
        #expect(accepts(g, #"{"name":"Ann","age":-3,"tags":["a","b"],"ok":null}"#))
        #expect(accepts(g, "{ \"name\": \"\", \"age\": 0, \"ok\": true }"))
        #expect(!accepts(g, "{\n  \"name\": \"\", \"age\": 0}"))  // at most one space between tokens
        #expect(!accepts(g, #"{"age": 42, "name": "Ann"}"#))  // schema order
        #expect(!accepts(g, #"{"name": "Ann"}"#))  // age is required
        #expect(!accepts(g, #"{"name": "Annabelle!", "age": 1}"#))  // maxLength 8
        #expect(!accepts(g, #"{"name": "A", "age": 1, "tags": ["c"]}"#))
        #expect(!accepts(g, #"{"name": "A", "age": 1, "tags": ["a", "b", "a"]}"#))
        #expect(!accepts(g, #"{"name": "A", "age": 01}"#))
        #expect(!accepts(g, #"{"name": "A", "age": 1, "x": 2}"#))
    }

    @Test func refsAnyOfConstAndRecursion() throws {
        let g = try grammar("""
        {"$defs": {"node": {"type": "object", "properties": {"v": {"const": 1}, "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
                            "required": ["v", "next"]}},
         "$ref": "#/$defs/node"}
        """)
        #expect(accepts(g, #"{"v": 1, "next": {"v": 1, "next": null}}"#))
        #expect(!accepts(g, #"{"v": 2, "next": null}"#))
    }

    @Test func unenforceableKeywordsAreRefusedByName() throws {
        for (schema, keyword) in [(#"{"type": "string", "pattern": "^a"}"#, "pattern"),
                                  (#"{"type": "integer", "minimum": 3}"#, "minimum"),
                                  (#"{"type": "object", "properties": {"a": {"format": "date"}}}"#, "format")] {
            #expect {
                _ = try grammar(schema)
            } throws: { error in
                "\(error)".contains("'\(keyword)'") && "\(error)".contains("not supported")
            }
        }
    }

    /// Random walks through the grammar, byte by byte, stopping when complete: every walk is JSON
    /// that validates against the schema.
    @Test func randomWalksProduceValidDocuments() throws {
        let g = try grammar(person)
        var rng = SystemRandomNumberGenerator()
        let alphabet: [UInt8] = Array((0x20...0x7E).map { UInt8($0) }) + Array("é".utf8)
        var completed = 0
        for _ in 0..<200 {
            var m = GrammarMatcher(grammar: g)
            var out: [UInt8] = []
            var steps = 0
            while !m.isComplete && steps < 400 {
                steps += 1
                let choices = alphabet.filter { b in var c = m; return c.accept(bytes: [b]) }
                // Close sooner as the walk grows, so walks end.
                let preferred = steps > 60 ? choices.filter { "}]\"".utf8.contains($0) } : []
                guard let b = (preferred.isEmpty ? choices : preferred).randomElement(using: &rng) else { break }
                do { let ok = m.accept(bytes: [b]); #expect(ok) }
                out.append(b)
            }
            guard m.isComplete else { continue }
            completed += 1
            let doc = try JSONSerialization.jsonObject(with: Data(out)) as? [String: Any]
            #expect(doc != nil, "\(String(decoding: out, as: UTF8.self))")
            guard let doc else { continue }
            #expect(doc["name"] is String && (doc["name"] as! String).count <= 8)
            #expect(doc["age"] is Int)
            #expect(Set(doc.keys).isSubset(of: ["name", "age", "tags", "ok"]))
            if let tags = doc["tags"] { #expect((tags as? [String]).map { $0.count <= 2 && $0.allSatisfy { $0 == "a" || $0 == "b" } } == true) }
        }
        #expect(completed >= 100, "only \(completed) of 200 walks completed")
    }

    @Test func anyObjectAcceptsJSONObjectsOnly() throws {
        let g = try GBNFParser.parse(JSONSchemaGrammar.anyObjectGBNF)
        #expect(accepts(g, #"{"a": [1, 2.5e3, -0.5, "x\n\u00e9", {"b": null}], "c": false}"#.replacingOccurrences(of: "\n", with: "\\n")))
        #expect(!accepts(g, #"[1]"#))
        #expect(!accepts(g, #"{"a": 1,}"#))
        #expect(!accepts(g, #"{'a': 1}"#))
    }
}
