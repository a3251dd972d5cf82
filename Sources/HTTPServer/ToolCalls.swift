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
    /// How the model writes calls (from its chat template; hermes when the tools are described
    /// in a system message instead).
    public var format: ToolCallFormat = .hermes

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
            let around = format.forcedCall(name: f.name) ?? ToolCallFormat.hermes.forcedCall(name: f.name)!
            return (before: around.before, schema: f.parameters, after: around.after)
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
    private let open: String, close: String
    /// gpt-oss: messages and channels rather than tags around calls.
    private var harmony: HarmonyToolStream?

    init(tools: ToolSet) {
        self.tools = tools
        (open, close) = tools.format.tags
        if tools.format == .harmony { harmony = HarmonyToolStream() }
    }

    /// What one push released.
    struct Output {
        var content = ""
        var calls: [ParsedToolCall] = []
    }

    /// Adds generated text; returns what can be shown now.
    mutating func push(_ text: String) -> Output {
        if harmony != nil {
            let (content, bodies) = harmony!.push(text)
            return harmonyOutput(content, bodies)
        }
        buffer += text
        var out = Output()
        while true {
            if !inside {
                for wrapper in tools.format.wrappers { buffer = buffer.replacingOccurrences(of: wrapper, with: "") }
                if let r = buffer.range(of: open) {
                    out.content += buffer[..<r.lowerBound]
                    buffer = String(buffer[r.upperBound...])
                    inside = true
                    continue
                }
                // Hold back a suffix that may begin the opening tag.
                var held = 0
                for tag in [open] + tools.format.wrappers {
                    for n in stride(from: min(tag.count - 1, buffer.count), through: 1, by: -1)
                    where n > held && buffer.hasSuffix(tag.prefix(n)) { held = n; break }
                }
                out.content += buffer.dropLast(held)
                buffer = String(buffer.suffix(held))
                return out
            }
            guard let r = buffer.range(of: close) else { return out }
            let body = String(buffer[..<r.lowerBound])
            buffer = String(buffer[r.upperBound...])
            inside = false
            take(body, closed: true, into: &out)
        }
    }

    /// Releases whatever is held at the end of generation.
    mutating func finish() -> Output {
        if harmony != nil {
            let (content, bodies) = harmony!.finish()
            return harmonyOutput(content, bodies)
        }
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
            out.content += open + body + (closed ? close : "")
        }
        // else: a second call with parallel_tool_calls false is dropped (documented).
    }

    private mutating func harmonyOutput(_ content: String, _ bodies: [String]) -> Output {
        var out = Output(content: content)
        for body in bodies {
            // A call the parser cannot read (or to an unknown function) is dropped from a
            // harmony reply's content: it was never part of the final channel.
            if var call = Self.parse(body, tools: tools), tools.parallel || callCount == 0 {
                call.index = callCount
                callCount += 1
                out.calls.append(call)
            }
        }
        return out
    }

    /// One call (the text between the format's tags) to one of the offered functions, or nil.
    static func parse(_ body: String, tools: ToolSet) -> ParsedToolCall? {
        guard let (name, arguments) = tools.format.parseBody(body), tools.functions.contains(where: { $0.name == name }) else { return nil }
        let text = arguments.serialized()
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
