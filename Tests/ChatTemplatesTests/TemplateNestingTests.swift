import Foundation
import Testing
@testable import ChatTemplates

/// The parser's nesting limit: hostile templates get a one-line error instead of overflowing the
/// stack, and templates nested as deeply as real ones (and far beyond) still render.
@Suite struct TemplateNestingTests {
    static func render(_ source: String) throws -> String {
        try ChatTemplate(source: source).render(messages: [], addGenerationPrompt: false)
    }

    static func nestingError(_ source: String) -> String? {
        do {
            _ = try ChatTemplate(source: source)
            return nil
        } catch let error as TokenizerError {
            return error.description
        } catch {
            return "\(error)"
        }
    }

    @Test func nestingUpToTheLimitRenders() throws {
        let depth = TemplateParser.maxDepth - 1
        // `{{ e }}` is one level, each parenthesis one more.
        #expect(try Self.render("{{ " + String(repeating: "(", count: depth - 1) + "1 + 2"
            + String(repeating: ")", count: depth - 1) + " }}") == "3")
        #expect(try Self.render(String(repeating: "{% if true %}", count: depth - 1) + "x"
            + String(repeating: "{% endif %}", count: depth - 1)) == "x")
        #expect(try Self.render("{{ " + String(repeating: "not ", count: depth - 1) + "false }}")
            == ((depth - 1) % 2 == 0 ? "False" : "True"))
        #expect(try Self.render("{{ [" + String(repeating: "[", count: depth - 2) + "7"
            + String(repeating: "]", count: depth - 2) + "] | length }}") == "1")
        // A chain of `depth - 1` additions is as deep as the tree gets.
        #expect(try Self.render("{{ 1" + String(repeating: " + 1", count: depth - 1) + " }}") == "\(depth)")
    }

    @Test(arguments: [
        ("parentheses", "{{ " + String(repeating: "(", count: 10_000) + "1" + String(repeating: ")", count: 10_000) + " }}"),
        ("lists", "{{ " + String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000) + " }}"),
        ("dicts", "{{ " + String(repeating: "{'a': ", count: 5_000) + "1" + String(repeating: " }", count: 5_000) + " }}"),
        ("signs", "{{ " + String(repeating: "-", count: 10_000) + "1 }}"),
        ("not", "{{ " + String(repeating: "not ", count: 10_000) + "x }}"),
        ("else chains", "{{ " + String(repeating: "1 if x else ", count: 5_000) + "2 }}"),
        ("call arguments", "{{ " + String(repeating: "f(", count: 10_000) + "1" + String(repeating: ")", count: 10_000) + " }}"),
        ("operator chains", "{{ 1" + String(repeating: " + 1", count: 10_000) + " }}"),
        ("concatenations", "{{ 'a'" + String(repeating: " ~ 'a'", count: 10_000) + " }}"),
        ("filter chains", "{{ x" + String(repeating: "|string", count: 10_000) + " }}"),
        ("attribute chains", "{{ x" + String(repeating: ".a", count: 10_000) + " }}"),
        ("and chains", "{{ x" + String(repeating: " and x", count: 10_000) + " }}"),
        ("blocks", String(repeating: "{% if x %}", count: 10_000)),
        ("for loops", String(repeating: "{% for a in b %}", count: 10_000)),
    ])
    func deepNestingIsAClearError(kind: String, source: String) {
        #expect(Self.nestingError(source) == "chat_template: blocks and expressions nest deeper than \(TemplateParser.maxDepth) levels",
                "\(kind)")
    }

    @Test func theLimitIsExact() {
        let atLimit = "{{ " + String(repeating: "(", count: TemplateParser.maxDepth - 1) + "1"
            + String(repeating: ")", count: TemplateParser.maxDepth - 1) + " }}"
        #expect(Self.nestingError(atLimit) == nil)
        let over = "{{ " + String(repeating: "(", count: TemplateParser.maxDepth) + "1"
            + String(repeating: ")", count: TemplateParser.maxDepth) + " }}"
        #expect(Self.nestingError(over) != nil)
    }
}
