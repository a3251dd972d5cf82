import Foundation
import Testing
@testable import ChatTemplates
import JSONCoding

/// Renders of real chat templates (Mixtral-8x7B-Instruct, Qwen2, Qwen2.5, Qwen3, OLMoE-Instruct) compared
/// byte for byte with `transformers`' own renderer (Tests/Fixtures/tokenizers/chat_templates/expected.json).
@Suite struct ChatTemplateTests {
    static let directory = Fixtures.root.appendingPathComponent("chat_templates")

    struct Case: CustomStringConvertible {
        var template: String
        var messages: [TemplateValue]
        var tools: [TemplateValue]?
        var addGenerationPrompt: Bool
        var extra: [String: TemplateValue]
        var specials: [String: TemplateValue]
        var rendered: String?
        var description: String { "\(template) (\(messages.count) messages, gen: \(addGenerationPrompt))" }
    }

    static func cases() throws -> [Case] {
        let all = try Fixtures.json(directory.appendingPathComponent("expected.json"))
        return all.arrayValue!.map { c in
            func dict(_ j: JSON?) -> [String: TemplateValue] {
                var d: [String: TemplateValue] = [:]
                for (k, v) in j?.objectValue ?? [] { d[k] = TemplateValue(json: v) }
                return d
            }
            return Case(
                template: c["template"]!.stringValue!,
                messages: c["messages"]!.arrayValue!.map(TemplateValue.init(json:)),
                tools: c["tools"]?.arrayValue?.map(TemplateValue.init(json:)),
                addGenerationPrompt: c["add_generation_prompt"]!.boolValue!,
                extra: dict(c["extra"]), specials: dict(c["specials"]),
                rendered: c["rendered"]?.stringValue)
        }
    }

    static func source(_ name: String) throws -> String {
        try String(contentsOf: directory.appendingPathComponent(name + ".jinja"), encoding: .utf8)
    }

    @Test func rendersLikeTransformers() throws {
        let cases = try Self.cases()
        #expect(cases.count >= 60)
        var failures = 0
        var templates: [String: ChatTemplate] = [:]
        for c in cases {
            let template = try templates[c.template] ?? ChatTemplate(source: Self.source(c.template))
            templates[c.template] = template
            let extra = c.specials.merging(c.extra) { $1 }
            do {
                let got = try template.render(
                    messages: c.messages, tools: c.tools, addGenerationPrompt: c.addGenerationPrompt,
                    extraContext: extra)
                if let expected = c.rendered {
                    if !sameBytes(got, expected) {
                        failures += 1
                        Issue.record("\(c)\n got      \(show(got))\n expected \(show(expected))")
                    }
                } else {
                    failures += 1
                    Issue.record("\(c): expected raise_exception, got \(show(got))")
                }
            } catch {
                if c.rendered != nil {
                    failures += 1
                    Issue.record("\(c): unexpected error \(error)")
                } else {
                    #expect("\(error)".contains("raise_exception"))
                }
            }
        }
        #expect(failures == 0)
        #expect(templates.count == 5)
    }

    @Test func chatMessageOverloadMatchesValues() throws {
        let template = try ChatTemplate(source: Self.source("qwen2-instruct"))
        let messages = [ChatMessage(role: "user", content: "Hi")]
        let a = try template.render(messages: messages, addGenerationPrompt: true)
        #expect(a == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    }

    @Test func builtInChatML() throws {
        let out = try ChatTemplate.chatML.render(
            messages: [ChatMessage(role: "system", content: "S"), ChatMessage(role: "user", content: "U")],
            addGenerationPrompt: true)
        #expect(out == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n")
    }

    @Test(arguments: [
        ("{% include 'x.jinja' %}", "include"),
        ("{{ x | wordwrap(10) }}", "wordwrap"),
        ("{% if x is prime %}{% endif %}", "prime"),
        ("{{ x.format(1) }}", "format"),
        ("{% for x in y %}", "endfor"),
        ("{% raw %}{% endraw %}", "raw"),
        ("{{ x + }}", "unexpected"),
        ("{% extends 'base' %}", "extends"),
    ])
    func unsupportedSyntaxFailsAtLoad(source: String, mention: String) {
        do {
            _ = try ChatTemplate(source: source)
            Issue.record("\(source.debugDescription) should not load")
        } catch let error as TokenizerError {
            #expect(error.description.contains(mention), "\(error)")
            #expect(error.description.contains("chat_template"))
        } catch {
            Issue.record("unexpected error type \(error)")
        }
    }

    @Test func jinjaSemantics() throws {
        func render(_ s: String, _ context: [String: TemplateValue] = [:]) throws -> String {
            try ChatTemplate(source: s).render(messages: [], addGenerationPrompt: false, extraContext: context)
        }
        // Loop bodies get a fresh scope per iteration; namespaces carry state out.
        #expect(try render("{% set x = 0 %}{% for i in range(3) %}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }}") == "1110")
        #expect(try render("{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}") == "3")
        #expect(try render("{{ [1, 'a', none, true, 1.5, {'k': [1]}] }}") == "[1, 'a', None, True, 1.5, {'k': [1]}]")
        #expect(try render("{{ 7 // 2 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 'ab' * 2 }}") == "3 3.5 1024 -4 2 abab")
        #expect(try render("{{ 'a,b,,c'.split(',') }} {{ ' x '.strip() }} {{ 'abc'[::-1] }} {{ 'x' ~ 1 ~ none }}") == "['a', 'b', '', 'c'] x cba x1None")
        #expect(try render("{{ u ~ 'x' }}|{{ u|length }}|{{ u is defined }}") == "x|0|False")
        #expect(try render("{{ x|tojson }}", ["x": ["a": [1, 2.0, "é\"\n\u{1}"], "b": nil]]) == #"{"a": [1, 2.0, "é\"\n\u0001"], "b": null}"#)
        #expect(try render("{{ x|tojson(indent=2) }}", ["x": ["a": [1, 2], "b": [:]]]) == "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}")
        #expect(try render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", ["d": ["b": 1, "a": 2]]) == "b=1;a=2;")
        #expect(try render("{% for m in ms if m.r == 'u' %}{{ loop.index }}{{ m.c }}{% endfor %}",
                           ["ms": [["r": "u", "c": "x"], ["r": "a", "c": "y"], ["r": "u", "c": "z"]]]) == "1x2z")
        #expect(try render("{{ 'yes' if a else 'no' }}{{ 'x' if b }}", ["a": true]) == "yes")
        #expect(try render("{% macro f(a, b='B') %}[{{ a }}{{ b }}]{% endmacro %}{{ f(1) }}{{ f(2, b=3) }}") == "[1B][23]")
        #expect(try render("  {% if true %}\n    x\n  {% endif %}\n") == "    x\n")
        #expect(try render("a  {#- c -#}  b") == "ab")
    }

    /// A macro that calls itself without end (the fuzz target's find: a mistyped `endmacro` put the
    /// call inside the body) is an error, not a stack overflow; bounded recursion still renders.
    @Test func endlessMacroRecursionIsAnError() throws {
        #expect(throws: TokenizerError.self) {
            try ChatTemplate(source: "{% macro f(a) %}{{ f(a) }}{% endmacro %}{{ f(1) }}").render(messages: [], addGenerationPrompt: false)
        }
        #expect(throws: TokenizerError.self) {
            try ChatTemplate(source: "{% macro f(a) %}{{ g(a) }}{% endmacro %}{% macro g(a) %}{{ f(a) }}{% endmacro %}{{ f(1) }}")
                .render(messages: [], addGenerationPrompt: false)
        }
        let countdown = "{% macro c(n) %}{{ n }}{% if n > 0 %}{{ c(n - 1) }}{% endif %}{% endmacro %}{{ c(40) }}"
        #expect(try ChatTemplate(source: countdown).render(messages: [], addGenerationPrompt: false)
            == (0...40).reversed().map(String.init).joined())
    }

    @Test func raiseExceptionIsAnError() {
        #expect(throws: TokenizerError.self) {
            try ChatTemplate(source: "{{ raise_exception('bad roles') }}").render(messages: [], addGenerationPrompt: false)
        }
    }
}
