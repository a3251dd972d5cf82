import Grammar

/// A chat request's conversation: messages (with tool calls and tool results), the tools offered
/// and `tool_choice`, rendered into prompt text by the model's chat template. Shared by
/// `/v1/chat/completions` and `/apply-template`.
struct ChatRequest {
    /// The prompt text (the template's output, ending with the assistant generation prompt).
    var rendered: String
    /// Tools whose calls are parsed out of the reply (nil: none offered, or `tool_choice` none).
    var tools: ToolSet?
    /// The grammar a forced `tool_choice` (`required` or a named function) imposes.
    var toolGrammar: Grammar?

    /// Fields of one message the server understands.
    static let messageFields: Set<String> = ["role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content"]

    /// Parses `messages`, `tools`, `tool_choice`, `parallel_tool_calls` and `chat_template_kwargs`
    /// from `f` and renders the conversation with `codec`.
    static func parse(_ f: RequestFields, codec: PromptCodec) throws -> ChatRequest {
        guard let messagesValue = f.value("messages") else { throw APIError.invalidRequest("field 'messages' is required") }
        guard let items = messagesValue.arrayValue, !items.isEmpty else {
            throw APIError.invalidRequest("field 'messages' must be a non-empty array of messages")
        }
        var messages: [JSON] = []
        var contentBytes = 0
        var hasToolHistory = false
        for (i, item) in items.enumerated() {
            guard case .object = item else { throw APIError.invalidRequest("field 'messages[\(i)]' must be an object") }
            let m = RequestFields(object: item, path: "messages[\(i)]")
            try m.rejectUnknown(messageFields)
            guard let role = try m.string("role") else { throw APIError.invalidRequest("field 'messages[\(i)].role' is required") }
            var content = ""
            if let v = m.value("content") {
                if let s = v.stringValue { content = s } else if let parts = v.arrayValue {
                    // Content parts: only text is meaningful to a text model.
                    for (j, part) in parts.enumerated() {
                        let p = RequestFields(object: part, path: "messages[\(i)].content[\(j)]")
                        guard case .object = part else { throw APIError.invalidRequest("field '\(p.path)' must be an object") }
                        try p.rejectUnknown(["type", "text"])
                        guard try p.string("type") == "text" else {
                            throw APIError.invalidRequest("field '\(p.path).type': only 'text' content parts are supported")
                        }
                        content += try p.string("text") ?? ""
                    }
                } else {
                    throw m.wrongType("content", "a string or an array of content parts")
                }
            }
            contentBytes += content.utf8.count
            var message: [(String, JSON)] = [("role", .string(role)), ("content", .string(content))]
            if let name = try m.string("name") { message.append(("name", .string(name))) }
            if let id = try m.string("tool_call_id") { message.append(("tool_call_id", .string(id))); hasToolHistory = true }
            if let reasoning = try m.string("reasoning_content") { message.append(("reasoning_content", .string(reasoning))) }
            if let calls = m.value("tool_calls") {
                guard let list = calls.arrayValue else { throw m.wrongType("tool_calls", "an array of tool calls") }
                var parsed: [JSON] = []
                for (j, call) in list.enumerated() {
                    guard case .object = call else { throw APIError.invalidRequest("field 'messages[\(i)].tool_calls[\(j)]' must be an object") }
                    let c = RequestFields(object: call, path: "messages[\(i)].tool_calls[\(j)]")
                    try c.rejectUnknown(["id", "type", "function", "index"])
                    guard let fn = try c.object("function") else { throw APIError.invalidRequest("field '\(c.path).function' is required") }
                    try fn.rejectUnknown(["name", "arguments"])
                    guard let name = try fn.string("name") else { throw APIError.invalidRequest("field '\(fn.path).name' is required") }
                    let argumentsText = try fn.string("arguments") ?? "{}"
                    contentBytes += argumentsText.utf8.count
                    // Templates expect arguments as a mapping (`| tojson`, `.items()`); a string that is not JSON stays a string.
                    let arguments = (try? JSON.parse(Array(argumentsText.utf8))) ?? .string(argumentsText)
                    parsed.append(.object([("id", .string(try c.string("id") ?? "call_\(j)")), ("type", .string("function")),
                                           ("function", .object([("name", .string(name)), ("arguments", arguments)]))]))
                }
                message.append(("tool_calls", .array(parsed)))
                hasToolHistory = true
            }
            messages.append(.object(message))
        }
        try CompletionJob.checkPromptBytes(contentBytes, codec: codec)

        var tools: ToolSet? = nil
        if let value = f.value("tools") { tools = try ToolSet.parse(value) }
        if let parallel = try f.bool("parallel_tool_calls") { tools?.parallel = parallel }
        // A template that renders tools itself shows the model its own call format; one that
        // does not gets the Hermes description (`render`).
        if let source = codec.templateSource, codec.extended != nil, source.contains("tools") && source.contains("tool_calls") {
            tools?.format = ToolCallFormat.detect(templateSource: source)
        }
        var toolGrammar: Grammar? = nil
        if let choice = f.value("tool_choice") {
            if let mode = choice.stringValue {
                switch mode {
                case "auto": break
                case "none": tools = nil
                case "required":
                    guard let set = tools else { throw APIError.invalidRequest("field 'tool_choice': 'required' needs 'tools'") }
                    toolGrammar = try set.callGrammar(set.functions.map(\.name))
                default: throw APIError.invalidRequest("field 'tool_choice' must be 'none', 'auto', 'required' or a function, got '\(mode)'")
                }
            } else if case .object = choice {
                let c = RequestFields(object: choice, path: "tool_choice")
                try c.rejectUnknown(["type", "function"])
                guard try c.string("type") == "function", let fn = try c.object("function"), let name = try fn.string("name") else {
                    throw APIError.invalidRequest("field 'tool_choice' must be {\"type\": \"function\", \"function\": {\"name\": ...}}")
                }
                try fn.rejectUnknown(["name"])
                guard let set = tools, set.functions.contains(where: { $0.name == name }) else {
                    throw APIError.invalidRequest("field 'tool_choice': function '\(name)' is not among 'tools'")
                }
                toolGrammar = try set.callGrammar([name])
            } else {
                throw f.wrongType("tool_choice", "a string or an object")
            }
        }

        var extra: [(String, JSON)] = []
        if let kwargs = try f.object("chat_template_kwargs"), case let .object(members) = kwargs.object {
            extra = members
        }
        let rendered = try render(messages, tools: tools, extra: extra, hasToolHistory: hasToolHistory, codec: codec)
        return ChatRequest(rendered: rendered, tools: tools, toolGrammar: toolGrammar)
    }

    /// Renders through the model's template, with tools as its `tools` variable when the template
    /// uses them. A template that never mentions tools (or tool calls in the history) gets them as
    /// text instead: a system message describing the tools, past calls as `<tool_call>` blocks and
    /// results as `<tool_response>` blocks (the Hermes convention the reply parser reads).
    static func render(_ messages: [JSON], tools: ToolSet?, extra: [(String, JSON)], hasToolHistory: Bool, codec: PromptCodec) throws -> String {
        let source = codec.templateSource ?? ""
        let templateKnowsTools = source.contains("tools") && source.contains("tool_calls")
        do {
            if let ext = codec.extended, (tools == nil && !hasToolHistory) || templateKnowsTools {
                return try ext.renderChat(messages: messages, tools: tools?.definitions, extra: extra, addGenerationPrompt: true)
            }
            guard extra.isEmpty || codec.extended != nil else {
                throw APIError.invalidRequest("field 'chat_template_kwargs' is not supported by this model's codec")
            }
            var turns = messages.map(flatten)
            if let tools {
                let prompt = tools.systemPrompt()
                if let first = turns.first, first.role == "system" {
                    turns[0].content = first.content + "\n\n" + prompt
                } else {
                    turns.insert(ChatTurn(role: "system", content: prompt), at: 0)
                }
            }
            if let ext = codec.extended {
                let json = turns.map { JSON.object([("role", .string($0.role)), ("content", .string($0.content))]) }
                return try ext.renderChat(messages: json, tools: nil, extra: extra, addGenerationPrompt: true)
            }
            return try codec.renderChat(turns)
        } catch let e as APIError { throw e } catch {
            throw APIError.invalidRequest("field 'messages': the chat template failed: \(error)")
        }
    }

    /// One message as plain text for a template without tool support.
    static func flatten(_ message: JSON) -> ChatTurn {
        let role = message["role"]?.stringValue ?? "user"
        var content = message["content"]?.stringValue ?? ""
        if role == "tool" {
            return ChatTurn(role: "user", content: "<tool_response>\n\(content)\n</tool_response>")
        }
        for call in message["tool_calls"]?.arrayValue ?? [] {
            let fn = call["function"] ?? .null
            let body = JSON.object([("name", fn["name"] ?? .null), ("arguments", fn["arguments"] ?? .object([]))]).serialized()
            content += (content.isEmpty ? "" : "\n") + "\(ToolSet.open)\n\(body)\n\(ToolSet.close)"
        }
        return ChatTurn(role: role, content: content)
    }
}
