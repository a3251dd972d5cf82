import Foundation
import Grammar
import Testing
@testable import HTTPServer

/// The DeepSeek-V3, GLM-4.5 and gpt-oss (harmony) tool-call formats: chosen from the chat
/// template, parsed out of whole replies and out of replies streamed a character at a time
/// (every split of a tag), on text laid out as each family's template writes a past call.
@Suite struct ToolCallFormatTests {
    static func tools(_ format: ToolCallFormat) throws -> ToolSet {
        var set = try ToolSet.parse(try JSON.parse(Array(#"""
            [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
              "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}},
             {"type": "function", "function": {"name": "get_time"}}]
            """#.utf8)))
        set.format = format
        return set
    }

    /// Whole and streamed one character at a time (and in two-character pieces): the same content and calls.
    static func parse(_ text: String, _ format: ToolCallFormat) throws -> (content: String, calls: [(String, JSON)]) {
        let set = try tools(format)
        let whole = ToolCallStream.split(text, tools: set)
        for size in [1, 2, 7] {
            var stream = ToolCallStream(tools: set)
            var content = "", names: [String] = [], arguments: [String] = []
            var rest = Substring(text)
            while !rest.isEmpty {
                let out = stream.push(String(rest.prefix(size)))
                rest = rest.dropFirst(size)
                content += out.content
                names += out.calls.map(\.name)
                arguments += out.calls.map(\.arguments)
            }
            let end = stream.finish()
            content += end.content
            names += end.calls.map(\.name)
            arguments += end.calls.map(\.arguments)
            #expect(content == whole.content, "streamed in pieces of \(size)")
            #expect(names == whole.calls.map(\.name) && arguments == whole.calls.map(\.arguments))
        }
        return (whole.content, try whole.calls.map { ($0.name, try JSON.parse(Array($0.arguments.utf8))) })
    }

    @Test func theFormatFollowsTheTemplate() {
        #expect(ToolCallFormat.detect(templateSource: "{{'<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n'}}") == .deepSeekV3)
        #expect(ToolCallFormat.detect(templateSource: "{{'<｜tool▁call▁begin｜>' + tool['function']['name'] + '<｜tool▁sep｜>' + tool['function']['arguments']}}") == .deepSeekV31)
        #expect(ToolCallFormat.detect(templateSource: "<tool_call>{{ tc.name }}\n{% for k, v in args.items() %}<arg_key>{{ k }}</arg_key>") == .glm45)
        #expect(ToolCallFormat.detect(templateSource: "{{- \"<|start|>assistant to=\" + \"functions.\" + tool_call.name + \"<|channel|>commentary json<|message|>\" }}{{- \"<|call|>\" }}") == .harmony)
        #expect(ToolCallFormat.detect(templateSource: "{% for tool in tools %}<tool_call>\n{{ tool_call | tojson }}\n</tool_call>{% endfor %}") == .hermes)
    }

    @Test func deepSeekV3CallsAreParsed() throws {
        let text = "Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Oslo\", \"days\": 2}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
        let parsed = try Self.parse(text, .deepSeekV3)
        #expect(parsed.content.trimmingCharacters(in: .whitespacesAndNewlines) == "Let me check.")
        #expect(parsed.calls.map(\.0) == ["get_weather", "get_time"])
        #expect(parsed.calls[0].1 == .object([("city", .string("Oslo")), ("days", .int(2))]))
        #expect(parsed.calls[1].1 == .object([]))
    }

    @Test func deepSeekV31CallsAreParsed() throws {
        let text = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Lima\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
        let parsed = try Self.parse(text, .deepSeekV31)
        #expect(parsed.content.isEmpty)
        #expect(parsed.calls.map(\.0) == ["get_weather"] && parsed.calls[0].1 == .object([("city", .string("Lima"))]))
        // An unknown function stays text.
        let unknown = try Self.parse("<｜tool▁call▁begin｜>rm<｜tool▁sep｜>{}<｜tool▁call▁end｜>", .deepSeekV31)
        #expect(unknown.calls.isEmpty && unknown.content.contains("rm"))
    }

    @Test func glm45CallsAreParsed() throws {
        // GLM-4.5's template: the name, then one key/value pair per argument; strings as they are,
        // other values as JSON.
        let text = "I will look it up.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>São Paulo</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call><tool_call>get_time\n</tool_call>"
        let parsed = try Self.parse(text, .glm45)
        #expect(parsed.content == "I will look it up.\n")
        #expect(parsed.calls.map(\.0) == ["get_weather", "get_time"])
        #expect(parsed.calls[0].1 == .object([("city", .string("São Paulo")), ("days", .int(3))]))
        #expect(parsed.calls[1].1 == .object([]))
        // A string that looks like a number is still a number in GLM's encoding; a quoted one is JSON text.
        let quoted = try Self.parse("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>\"x\"</arg_value>\n</tool_call>", .glm45)
        #expect(quoted.calls.first?.1 == .object([("city", .string("\"x\""))]))
    }

    @Test func harmonyCallsAndChannelsAreParsed() throws {
        // gpt-oss after "<|start|>assistant": reasoning, then a call (cut by its <|call|> stop token or not).
        let text = "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Rome\"}<|call|>"
        let parsed = try Self.parse(text, .harmony)
        #expect(parsed.content.isEmpty) // the analysis channel is not content
        #expect(parsed.calls.map(\.0) == ["get_weather"] && parsed.calls[0].1 == .object([("city", .string("Rome"))]))
        // The recipient before the channel, and the text ending at the stop token (not in the text).
        let early = try Self.parse(" to=functions.get_time<|channel|>commentary json<|message|>{}", .harmony)
        #expect(early.calls.map(\.0) == ["get_time"])
        // A final answer is content, and reasoning is dropped.
        let answer = try Self.parse("<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>It is sunny.<|return|>", .harmony)
        #expect(answer.content == "It is sunny." && answer.calls.isEmpty)
        // No harmony markup at all: the text is content.
        #expect(try Self.parse("plain text", .harmony).content == "plain text")
    }

    @Test func forcedCallsUseTheModelsFormat() throws {
        for format in ToolCallFormat.allCases {
            let set = try Self.tools(format)
            let grammar = try set.callGrammar(["get_weather"])
            // The text a forced call allows parses back into that call.
            let around = format.forcedCall(name: "get_weather")!
            let call = around.before + #"{"city": "Oslo"}"# + around.after
            #expect(GrammarCheck.accepts(grammar, call), "\(format)")
            let parsed = ToolCallStream.split(call, tools: set)
            #expect(parsed.calls.map(\.name) == ["get_weather"], "\(format)")
            #expect(parsed.content.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(format)")
        }
    }
}

enum GrammarCheck {
    /// Whether `grammar` accepts exactly `text`.
    static func accepts(_ grammar: Grammar, _ text: String) -> Bool {
        var matcher = GrammarMatcher(grammar: grammar)
        return matcher.accept(text) && matcher.isAccepting
    }
}
