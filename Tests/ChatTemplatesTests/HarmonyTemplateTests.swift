import Foundation
import Testing
@testable import ChatTemplates
import JSONCoding

/// gpt-oss's published chat template (the harmony format: system and developer messages,
/// reasoning effort, model identity, builtin and function tools rendered as TypeScript,
/// analysis/final/commentary channels, tool calls and results, raise_exception) rendered byte for
/// byte as `transformers` renders it. The template is the model's file and is not committed:
/// `scripts/make_harmony_reference.py TEMPLATE OUT.json` renders the cases with transformers and
/// `MOE_HARMONY_CASES=OUT.json` runs them here (skipped without it).
@Suite struct HarmonyTemplateTests {
    static let casesFile = ProcessInfo.processInfo.environment["MOE_HARMONY_CASES"]

    /// The gap the harmony template hit: a macro calling itself (its TypeScript type renderer
    /// recurses into arrays, objects and oneOf), as Jinja allows.
    @Test func macrosMayRecurse() throws {
        let template = try ChatTemplate(source: "{%- macro f(n, sep='.') -%}{%- if n > 0 -%}{{ n }}{{ sep }}{{ f(n - 1, sep) }}{%- endif -%}{%- endmacro -%}{{ f(3) }}|{{ f(2, sep='-') }}")
        #expect(try template.render(messages: [ChatMessage](), addGenerationPrompt: false) == "3.2.1.|2-1-")
    }

    @Test(.enabled(if: casesFile != nil, "set MOE_HARMONY_CASES (scripts/make_harmony_reference.py)"))
    func rendersLikeTransformers() throws {
        let document = try JSON.parse([UInt8](Data(contentsOf: URL(fileURLWithPath: Self.casesFile!))), options: .lenient)
        let template = try ChatTemplate(source: document["template"]!.stringValue!)
        let cases = document["cases"]!.arrayValue!
        #expect(cases.count >= 10)
        for c in cases {
            var extra: [String: TemplateValue] = [:]
            for (k, v) in c["extra"]?.objectValue ?? [] { extra[k] = TemplateValue(json: v) }
            let messages = c["messages"]!.arrayValue!.map(TemplateValue.init(json:))
            let description = "\(messages.count) messages, extra \(extra.keys.sorted()), gen \(c["add_generation_prompt"]!.boolValue!)"
            do {
                let got = try template.render(messages: messages, tools: c["tools"]?.arrayValue?.map(TemplateValue.init(json:)),
                                              addGenerationPrompt: c["add_generation_prompt"]!.boolValue!, extraContext: extra)
                if let expected = c["rendered"]?.stringValue {
                    #expect(sameBytes(got, expected), "\(description)\n got      \(show(got))\n expected \(show(expected))")
                } else {
                    Issue.record("\(description): expected raise_exception, got \(show(got))")
                }
            } catch {
                #expect(c["rendered"] == nil, "\(description): unexpected error \(error)")
                #expect("\(error)".contains("raise_exception"), "\(error)")
            }
        }
    }
}
