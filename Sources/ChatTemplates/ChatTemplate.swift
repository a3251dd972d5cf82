import Foundation

/// One chat message as the API receives it.
public struct ChatMessage: Sendable, Codable, Equatable {
    /// `system`, `user`, `assistant` or `tool`.
    public var role: String
    /// The message text.
    public var content: String

    /// Creates a message.
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }

    /// The message as a template value (`{"role": ..., "content": ...}`).
    public var templateValue: TemplateValue { ["role": .string(role), "content": .string(content)] }
}

/// A chat template: the Jinja `chat_template` of `tokenizer_config.json`, parsed once at load time and
/// rendered as `transformers`' `apply_chat_template` renders it (Jinja with `trim_blocks`,
/// `lstrip_blocks`, `raise_exception`, `strftime_now` and a `tojson` that does not escape non-ASCII).
///
/// The supported subset: `if`/`elif`/`else`, `for` (with `else`, filters, tuple unpacking, `loop.*`,
/// `break`/`continue`), `set` (including `namespace` attributes and block sets), `macro`, expressions with
/// Python semantics (arithmetic, comparisons, `in`, `~`, conditional expressions, slicing, literals), tests
/// such as `is defined`/`is none`/`is string`, filters such as `trim`/`length`/`tojson`/`join`/`map`/`selectattr`,
/// and string/dict methods such as `startswith`/`split`/`strip`/`items`/`get`. Anything else makes
/// ``init(source:globals:)`` throw, naming the unsupported construct.
public struct ChatTemplate: Sendable {
    /// The template text.
    public let source: String
    /// Variables every render sees (`bos_token`, `eos_token`, ...), overridable per render.
    public let globals: [String: TemplateValue]
    let program: [TemplateNode]

    /// A ChatML template (`<|im_start|>role\ncontent<|im_end|>\n`), used when a model ships none.
    public static let chatMLSource =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

    /// The built-in ChatML template.
    public static var chatML: ChatTemplate { try! ChatTemplate(source: chatMLSource) }

    /// Parses `source`.
    ///
    /// - Throws: ``TokenizerError`` (file `chat_template`) naming the unsupported tag, filter, test or
    ///   method, or the syntax error.
    public init(source: String, globals: [String: TemplateValue] = [:]) throws {
        self.source = source
        self.globals = globals
        program = try TemplateParser.parse(source)
    }

    /// Renders `messages` (role and content only).
    ///
    /// - Parameters:
    ///   - addGenerationPrompt: append the assistant header the model should continue from.
    ///   - extraContext: more template variables (`tools`, `enable_thinking`, ...).
    /// - Throws: ``TokenizerError`` when the template calls `raise_exception` or fails at run time.
    public func render(
        messages: [ChatMessage], addGenerationPrompt: Bool, extraContext: [String: TemplateValue] = [:]
    ) throws -> String {
        try render(messages: messages.map(\.templateValue), addGenerationPrompt: addGenerationPrompt,
                   extraContext: extraContext)
    }

    /// Renders messages given as template values (so they may carry `tool_calls`, `reasoning_content`, ...).
    public func render(
        messages: [TemplateValue], tools: [TemplateValue]? = nil, addGenerationPrompt: Bool,
        extraContext: [String: TemplateValue] = [:]
    ) throws -> String {
        var context = globals
        context["messages"] = .array(messages)
        context["tools"] = tools.map { .array($0) } ?? TemplateValue.none
        context["documents"] = TemplateValue.none
        context["add_generation_prompt"] = .bool(addGenerationPrompt)
        for (k, v) in extraContext { context[k] = v }
        return try TemplateInterpreter.render(program, context: context)
    }
}
