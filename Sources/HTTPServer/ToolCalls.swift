import Foundation
import Grammar

/// The functions a chat request offers (`tools`) and how the model may use them (`tool_choice`).
public struct ToolSet: Sendable {
    /// One offered function.
    public struct Function: Sendable {
        /// Its name.
        public var name: String
        /// Its parameters' JSON schema (`{"type": "object"}` when none was given).
        public var parameters: JSON
    }
    /// The functions, in request order.
    public var functions: [Function]
    /// The `tools` array as the client sent it: what the chat template sees.
    public var definitions: [JSON]
    /// `parallel_tool_calls`: false keeps only the first call the model makes.
    public var parallel: Bool = true

    /// The tags of the Qwen3 / Hermes format: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.
    static let open = "<tool_call>", close = "</tool_call>"

    /// Parses `tools` (an array of `{"type": "function", "function": {...}}`).
    static func parse(_ value: JSON) throws -> ToolSet {
        guard let items = value.arrayValue, !items.isEmpty else { throw APIError.invalidRequest("field 'tools' must be a non-empty array of tools") }
        var functions: [Function] = []
        for (i, item) in items.enumerated() {
            guard case .object = item else { throw APIError.invalidRequest("field 'tools[\(i)]' must be an object") }
            let t = RequestFields(object: item, path: "tools[\(i)]")
            try t.rejectUnknown(["type", "function"])
            guard try t.string("type") == "function" else { throw APIError.invalidRequest("field 'tools[\(i)].type' must be 'function'") }
            guard let f = try t.object("function") else { throw APIError.invalidRequest("field 'tools[\(i)].function' is required") }
            try f.rejectUnknown(["name", "description", "parameters", "strict"])
            guard let name = try f.string("name"), !name.isEmpty else { throw APIError.invalidRequest("field 'tools[\(i)].function.name' is required") }
            let parameters = f.value("parameters") ?? .object([("type", .string("object"))])
            guard case .object = parameters else { throw APIError.invalidRequest("field 'tools[\(i)].function.parameters' must be a JSON schema object") }
            // Checked now, so a schema the grammar cannot enforce fails the request, not a later forced call.
            do { _ = try JSONSchemaGrammar.gbnf(for: parameters) } catch let e as GrammarError {
                throw APIError.invalidRequest("field 'tools[\(i)].function.parameters': \(e.description)")
            }
            functions.append(Function(name: name, parameters: parameters))
        }
        return ToolSet(functions: functions, definitions: items)
    }

    /// The grammar of one call to one of `names` (a forced `tool_choice`): the call's arguments
    /// must validate against the function's schema.
    func callGrammar(_ names: [String]) throws -> Grammar {
        let chosen = functions.filter { names.contains($0.name) }
        let parts = chosen.map { f in
            (before: "\(Self.open)\n{\"name\": \(JSON.string(f.name).serialized()), \"arguments\": ", schema: f.parameters, after: "}\n\(Self.close)")
        }
        do { return try GBNFParser.parse(try JSONSchemaGrammar.gbnf(alternatives: parts)) } catch let e as GrammarError {
            throw APIError.invalidRequest("field 'tools': \(e.description)")
        }
    }

    /// The system text that describes the tools to a model whose template cannot (it never
    /// mentions `tools`): the Hermes / Qwen convention the parser reads back.
    func systemPrompt() -> String {
        var text = "# Tools\n\nYou can call functions to help answer. Their signatures, one JSON object per line:\n<tools>\n"
        for d in definitions { text += d.serialized() + "\n" }
        text += "</tools>\n\nTo call a function, answer with a JSON object naming it and giving its arguments, inside tags:\n"
        text += "\(Self.open)\n{\"name\": <function name>, \"arguments\": <arguments as a JSON object>}\n\(Self.close)"
        return text
    }
}

/// One call parsed out of the model's text.
struct ParsedToolCall {
    var id: String
    var name: String
    /// The arguments as a JSON string (what OpenAI's `function.arguments` holds).
    var arguments: String

    /// The entry of `message.tool_calls`.
    func messageJSON(index: Int) -> JSON {
        .object([("id", .string(id)), ("type", .string("function")),
                 ("function", .object([("name", .string(name)), ("arguments", .string(arguments))]))])
    }

    /// A stream delta's `tool_calls[0]` (the whole call at once; clients concatenate `arguments`).
    var deltaJSON: JSON {
        .object([("index", .int(index)), ("id", .string(id)), ("type", .string("function")),
                 ("function", .object([("name", .string(name)), ("arguments", .string(arguments))]))])
    }
    var index = 0
}

/// Splits generated text into content and `<tool_call>` blocks as it streams: content is released
/// as soon as it cannot be the start of a tag; a call is released when its closing tag arrives
/// (or at the end, if the text ends inside an unclosed call whose JSON is complete). A block
/// that does not hold `{"name": <offered function>, "arguments": {...}}` stays content.
struct ToolCallStream {
    let tools: ToolSet
    private var buffer = ""
    private var inside = false
    private(set) var callCount = 0

    init(tools: ToolSet) { self.tools = tools }

    /// What one push released.
    struct Output {
        var content = ""
        var calls: [ParsedToolCall] = []
    }

    /// Adds generated text; returns what can be shown now.
    mutating func push(_ text: String) -> Output {
        buffer += text
        var out = Output()
        while true {
            if !inside {
                if let r = buffer.range(of: ToolSet.open) {
                    out.content += buffer[..<r.lowerBound]
                    buffer = String(buffer[r.upperBound...])
                    inside = true
                    continue
                }
                // Hold back a suffix that may begin the opening tag.
                var held = 0
                for n in stride(from: min(ToolSet.open.count - 1, buffer.count), through: 1, by: -1)
                where buffer.hasSuffix(ToolSet.open.prefix(n)) { held = n; break }
                out.content += buffer.dropLast(held)
                buffer = String(buffer.suffix(held))
                return out
            }
            guard let r = buffer.range(of: ToolSet.close) else { return out }
            let body = String(buffer[..<r.lowerBound])
            buffer = String(buffer[r.upperBound...])
            inside = false
            take(body, closed: true, into: &out)
        }
    }

    /// Releases whatever is held at the end of generation.
    mutating func finish() -> Output {
        var out = Output()
        if inside {
            take(buffer, closed: false, into: &out)
        } else {
            out.content = buffer
        }
        buffer = ""
        inside = false
        return out
    }

    private mutating func take(_ body: String, closed: Bool, into out: inout Output) {
        if var call = Self.parse(body, tools: tools), tools.parallel || callCount == 0 {
            call.index = callCount
            callCount += 1
            out.calls.append(call)
        } else if Self.parse(body, tools: tools) == nil {
            out.content += ToolSet.open + body + (closed ? ToolSet.close : "")
        }
        // else: a second call with parallel_tool_calls false is dropped (documented).
    }

    /// `{"name": ..., "arguments": ...}` for one of the offered functions, or nil.
    static func parse(_ body: String, tools: ToolSet) -> ParsedToolCall? {
        let trimmed = body.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let value = try? JSON.parse(Array(trimmed.utf8)), let name = value["name"]?.stringValue,
              tools.functions.contains(where: { $0.name == name }) else { return nil }
        let arguments = value["arguments"] ?? value["parameters"] ?? .object([])
        let text = arguments.stringValue ?? arguments.serialized()
        let id = "call_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(24).lowercased()
        return ParsedToolCall(id: id, name: name, arguments: text)
    }

    /// The content and calls of a whole text (non-streaming responses).
    static func split(_ text: String, tools: ToolSet) -> Output {
        var stream = ToolCallStream(tools: tools)
        var out = stream.push(text)
        let rest = stream.finish()
        out.content += rest.content
        out.calls += rest.calls
        return out
    }
}
