import Foundation
import Testing
@testable import ChatTemplates
import JSONCoding

/// The DeepSeek (V3 / R1 / V3.1), GLM-4.5 and MiniMax-M2 chat templates. The published templates are
/// the models' files and are not committed: `scripts/make_family_template_reference.py DIR OUT` renders
/// cases through them with transformers and `MOE_TEMPLATE_CASES=OUT` runs them here (skipped without it).
/// Committed instead: small templates written here that use each Jinja feature those templates rely on.
@Suite struct FamilyTemplateTests {
    static let casesDirectory = ProcessInfo.processInfo.environment["MOE_TEMPLATE_CASES"]

    static func render(_ source: String, _ messages: [TemplateValue] = [], generation: Bool = false,
                       _ extra: [String: TemplateValue] = [:]) throws -> String {
        try ChatTemplate(source: source).render(messages: messages, addGenerationPrompt: generation, extraContext: extra)
    }

    static func message(_ role: String, _ content: String) -> TemplateValue {
        TemplateValue(json: .object([("role", .string(role)), ("content", .string(content))]))
    }

    /// DeepSeek's `namespace(...)` flags set inside a loop and read after it; a plain `set` in the loop
    /// does not leak out of it.
    @Test func namespaceAttributesOutliveTheLoopPlainSetsDoNot() throws {
        let source = "{% set ns = namespace(is_first=false, sys='') %}{% set plain = 'outer' %}"
            + "{%- for m in messages %}{%- if m['role'] == 'system' %}{% set ns.sys = ns.sys + m['content'] %}{% set ns.is_first = true %}"
            + "{% set plain = 'inner' %}{%- endif %}{%- endfor %}{{ ns.sys }}|{{ ns.is_first }}|{{ plain }}"
        #expect(try Self.render(source, [Self.message("system", "a"), Self.message("user", "u"), Self.message("system", "b")]) == "ab|True|outer")
    }

    /// DeepSeek R1 / V3.1: everything after `</think>`, split once, or split and re-joined from the second part.
    @Test func splitWithMaxSplitsIndexingSlicingAndJoin() throws {
        let source = "{% set c = 'a</think>b</think>c' %}{{ c.split('</think>')[-1] }}|{{ c.split('</think>', 1)[1] }}|"
            + "{{ c.split('</think>')[1:] | join('</think>') }}|{{ c.split('</think>')[0] }}|{{ 'x' in c }}|{{ '</think>' in c }}"
        #expect(try Self.render(source) == "c|b</think>c|b</think>c|a|False|True")
    }

    /// GLM-4.5's reasoning extraction: rstrip/lstrip with characters, strip, endswith, chained.
    @Test func stripFamilyAndEndswith() throws {
        let source = #"{% set c = '\n<think>\nwhy\n</think>\n\nanswer  ' %}"#
            + #"{{ c.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') }}|{{ c.split('</think>')[-1].lstrip('\n') }}|"#
            + #"{{ c.strip() }}|{{ 'q /nothink'.endswith('/nothink') }}|{{ 'xxaxx'.strip('x') }}"#
        #expect(try Self.render(source) == "why|answer  |<think>\nwhy\n</think>\n\nanswer|True|a")
    }

    /// The tests the three templates use: defined, none, string, iterable, mapping (and their negations),
    /// `is true` / `is false` (V3.1 variants with enable_thinking).
    @Test func typeTests() throws {
        let source = "{% for v in [none, 'text', [1, 2], {'a': 1}, true, false] %}"
            + "{{ v is none }}{{ v is string }}{{ v is iterable }}{{ v is mapping }}{{ v is not mapping }}{{ v is true }}{{ v is false }}|"
            + "{% endfor %}{{ thinking is defined }}{{ undefinedname is defined }}{{ not undefinedname is defined }}"
        let expected = "TrueFalseFalseFalseTrueFalseFalse|FalseTrueTrueFalseTrueFalseFalse|FalseFalseTrueFalseTrueFalseFalse|"
            + "FalseFalseTrueTrueFalseFalseFalse|FalseFalseFalseFalseTrueTrueFalse|FalseFalseFalseFalseTrueFalseTrue|TrueFalseTrue"
        #expect(try Self.render(source, [], ["thinking": .bool(true)]) == expected)
    }

    /// GLM-4.5's `visible_text` macro over string or list-of-parts content, called inside an expression
    /// with a method on its result, and the inline conditional for the `/nothink` switch.
    @Test func macroResultsAreStringsWithMethodsAndConditionalExpressions() throws {
        let source = "{%- macro visible_text(content) -%}{%- if content is string -%}{{- content }}"
            + "{%- elif content is iterable and content is not mapping -%}{%- for item in content -%}"
            + "{%- if item is mapping and item.type == 'text' -%}{{- item.text }}{%- elif item is string -%}{{- item }}{%- endif -%}"
            + "{%- endfor -%}{%- endif -%}{%- endmacro -%}"
            + "{%- for m in messages -%}{{ visible_text(m.content) }}"
            + "{{- '/nothink' if (enable_thinking is defined and not enable_thinking and not visible_text(m.content).endswith('/nothink')) else '' -}};"
            + "{%- endfor -%}"
        let parts = TemplateValue(json: .object([("role", .string("user")), ("content", .array([
            .object([("type", .string("text")), ("text", .string("a"))]), .string("b"),
            .object([("type", .string("image")), ("text", .string("x"))])]))]))
        let messages = [Self.message("user", "hi"), Self.message("user", "x /nothink"), parts]
        #expect(try Self.render(source, messages, ["enable_thinking": .bool(false)]) == "hi/nothink;x /nothink;ab/nothink;")
        #expect(try Self.render(source, messages, ["enable_thinking": .bool(true)]) == "hi;x /nothink;ab;")
        #expect(try Self.render(source, messages) == "hi;x /nothink;ab;")
    }

    /// GLM-4.5's tool list: `tojson` (transformers' filter) keeps non-ASCII unless `ensure_ascii=True` (then
    /// `\uXXXX`, surrogate pairs), takes `separators`, keeps keys in their order; loop.first / loop.index0 and indexing the previous message.
    @Test func tojsonWithEnsureAsciiAndLoopVariables() throws {
        let tool = TemplateValue(json: .object([("name", .string("météo")), ("n", .int(2)), ("ok", .bool(true)), ("x", .null)]))
        let source = "{{ tools[0] | tojson(ensure_ascii=False) }}|{{ tools[0] | tojson }}|{{ tools[0] | tojson(ensure_ascii=True) }}|"
            + "{{ tools[0] | tojson(separators=[',', ':']) }}|{{ '😀' | tojson(ensure_ascii=True) }}|"
            + "{%- for m in messages -%}{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}<obs>{%- endif -%}{{ m.content }}{%- endfor -%}"
        let got = try ChatTemplate(source: source).render(
            messages: [Self.message("tool", "1"), Self.message("tool", "2"), Self.message("user", "u"), Self.message("tool", "3")],
            tools: [tool], addGenerationPrompt: false)
        #expect(got == #"{"name": "météo", "n": 2, "ok": true, "x": null}|{"name": "météo", "n": 2, "ok": true, "x": null}|"#
                + #"{"name": "m\u00e9t\u00e9o", "n": 2, "ok": true, "x": null}|{"name":"météo","n":2,"ok":true,"x":null}|"\ud83d\ude00"|<obs>12u<obs>3"#)
    }

    /// DeepSeek's `'tool_calls' in message` / `not in`, `message['tool_calls'] is defined and ... is not none`.
    @Test func membershipInMappings() throws {
        let withCalls = TemplateValue(json: .object([("role", .string("assistant")), ("content", .null),
                                                     ("tool_calls", .array([.object([("function", .object([("name", .string("f"))]))])]))]))
        let source = "{%- for m in messages -%}{{ 'tool_calls' in m }}{{ 'tool_calls' not in m }}"
            + "{{ m['tool_calls'] is defined and m['tool_calls'] is not none }}{{ m['content'] is none }};{%- endfor -%}"
        #expect(try Self.render(source, [withCalls, Self.message("user", "u")]) == "TrueFalseTrueTrue;FalseTrueFalseFalse;")
    }

    /// MiniMax-M2: a `set` inside a macro for a name the caller did not define, `~` and `+` in one
    /// expression, the loop variable re-bound inside its loop, arguments of every JSON type through
    /// `items()` and `tojson` unless a string, a negative index, and an attribute of a string (a tool
    /// result part that is a bare string) being undefined rather than an error.
    @Test func miniMaxM2Idioms() throws {
        let source = "{%- macro identity() -%}{%- if model_identity is not defined -%}{%- set model_identity = 'default' -%}"
            + "{%- endif -%}{{- model_identity }}{%- endmacro -%}"
            + "{{ identity() }}{{ '\\n' ~ 'Date: ' + date }}|"
            + "{%- for tool_call in calls -%}{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}"
            + "{{ tool_call.name }}({%- for k, v in tool_call.arguments.items() %}{{ k }}={{ v | tojson(ensure_ascii=False) if v is not string else v }};{% endfor %})"
            + "{%- endfor -%}|{{ calls[-1].function.name }}|"
            + "{%- for tr in parts -%}{{ tr.output if tr.output is defined else (tr.text if tr.type == 'text' and tr.text is defined else tr) }},{%- endfor -%}"
        let args = JSON.object([("city", .string("Paris")), ("days", .int(3)), ("ratio", .double(0.5)),
                                                   ("metric", .bool(true)), ("none", .null),
                                                   ("opts", .object([("list", .array([.int(1), .string("é")]))]))])
        let calls = TemplateValue(json: .array([.object([("type", .string("function")), ("function", .object([
            ("name", .string("get_weather")), ("arguments", args)]))])]))
        let parts = TemplateValue(json: .array([.object([("output", .string("21C"))]),
                                                .object([("type", .string("text")), ("text", .string("sunny"))]), .string("raw")]))
        let context: [String: TemplateValue] = ["date": TemplateValue(json: .string("2025-11-03")), "calls": calls, "parts": parts]
        let expected = "default\nDate: 2025-11-03|get_weather(city=Paris;days=3;ratio=0.5;metric=true;none=null;"
            + #"opts={"list": [1, "é"]};)|get_weather|21C,sunny,raw,"#
        #expect(try Self.render(source, [], context) == expected)
        var named = context
        named["model_identity"] = TemplateValue(json: .string("MiniMax"))
        #expect(try Self.render(source, [], named).hasPrefix("MiniMax\nDate"))
    }

    @Test(.enabled(if: casesDirectory != nil, "set MOE_TEMPLATE_CASES (scripts/make_family_template_reference.py)"))
    func publishedTemplatesRenderLikeTransformers() throws {
        let directory = URL(fileURLWithPath: Self.casesDirectory!)
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".json") }.sorted()
        #expect(!files.isEmpty)
        for file in files {
            let document = try JSON.parse([UInt8](Data(contentsOf: directory.appendingPathComponent(file))), options: .lenient)
            let template = try ChatTemplate(source: document["template"]!.stringValue!)
            var specials: [String: TemplateValue] = [:]
            for (k, v) in document["specials"]?.objectValue ?? [] { specials[k] = TemplateValue(json: v) }
            let cases = document["cases"]!.arrayValue!
            var failures = 0
            for c in cases {
                var extra = specials
                for (k, v) in c["extra"]?.objectValue ?? [] { extra[k] = TemplateValue(json: v) }
                let messages = c["messages"]!.arrayValue!.map(TemplateValue.init(json:))
                let gen = c["add_generation_prompt"]!.boolValue!
                let description = "\(file): \(messages.count) messages, extra \(extra.keys.sorted()), gen \(gen)"
                do {
                    let got = try template.render(messages: messages, tools: c["tools"]?.arrayValue?.map(TemplateValue.init(json:)),
                                                  addGenerationPrompt: gen, extraContext: extra)
                    if let expected = c["rendered"]?.stringValue {
                        if Array(got.utf8) != Array(expected.utf8) {
                            failures += 1
                            Issue.record("\(description)\n got      \(show(got))\n expected \(show(expected))")
                        }
                    } else {
                        failures += 1
                        Issue.record("\(description): transformers failed (\(c["error"]?.stringValue ?? "")), got \(show(got))")
                    }
                } catch {
                    if c["rendered"] != nil {
                        failures += 1
                        Issue.record("\(description): unexpected error \(error)")
                    }
                }
            }
            print("\(file): \(cases.count - failures) of \(cases.count) renders identical to transformers")
        }
    }
}
