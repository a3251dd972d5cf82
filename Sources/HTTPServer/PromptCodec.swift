/// One chat message as the API receives it.
public struct ChatTurn: Sendable, Equatable {
    /// `system`, `user`, `assistant`, ...
    public var role: String
    /// The message text.
    public var content: String
    /// A message.
    public init(role: String, content: String) { self.role = role; self.content = content }
}

/// What the HTTP layer needs from the tokenizer and chat template. The lead adapts the real
/// `Tokenizer` + `ChatTemplate` to this in a few lines; tests use a byte-level stand-in.
/// Called from worker threads, never from the event loop (tokenizing a long prompt is work).
public protocol PromptCodec: Sendable {
    /// Token ids of `text`, with the model's BOS etc. when `addSpecialTokens`.
    func encode(_ text: String, addSpecialTokens: Bool) -> [Int]
    /// Text of `ids` (special tokens included as text).
    func decode(_ ids: [Int]) -> String
    /// The chat rendered with the model's template, ending with the assistant generation prompt.
    func renderChat(_ messages: [ChatTurn]) throws -> String
    /// Maximum prompt + generated tokens.
    var contextLength: Int { get }
    /// Vocabulary size, to validate token ids sent by clients.
    var vocabularySize: Int { get }
    /// Name reported by `/v1/models` and in responses.
    var modelName: String { get }
    /// Ids that end generation by default (EOS, end-of-turn).
    var stopTokenIds: Set<Int> { get }
}

/// What the newer routes need beyond `PromptCodec`'s core; every member has a default, so a
/// minimal codec (the tests' byte codec) still works and reports what it lacks.
extension PromptCodec {
    /// The UTF-8 bytes token `id` stands for inside a text (nil for special tokens and ids without
    /// text): what grammar-constrained decoding matches against. Default: the text of `decode([id])`.
    public func tokenBytesDefault(_ id: Int) -> [UInt8]? {
        let text = decode([id])
        return text.isEmpty ? nil : Array(text.utf8)
    }
}

/// Optional capabilities of a codec: raw token bytes, token lookup by text (fill-in-the-middle
/// tokens), the chat template's source and rendering with tools. `TokenizerCodec` implements them;
/// `ExtendedCodecDefaults` gives the answers of a codec that has none.
public protocol ExtendedPromptCodec: PromptCodec {
    /// The bytes token `id` stands for inside a text; nil for special tokens.
    func tokenBytes(_ id: Int) -> [UInt8]?
    /// The id of a token given by its text (`<|fim_prefix|>`), if the vocabulary has it.
    func tokenId(for text: String) -> Int?
    /// The Jinja chat template.
    var chatTemplateSource: String? { get }
    /// Renders messages given as JSON objects (they may carry `tool_calls`, `tool_call_id`,
    /// `name`), with `tools` (OpenAI function definitions) as the template's `tools` variable and
    /// `extra` as further variables (`chat_template_kwargs`).
    func renderChat(messages: [JSON], tools: [JSON]?, extra: [(String, JSON)], addGenerationPrompt: Bool) throws -> String
}

extension PromptCodec {
    /// `tokenBytes` of an `ExtendedPromptCodec`, else the decoded text's bytes.
    func bytes(ofToken id: Int) -> [UInt8]? {
        if let e = self as? ExtendedPromptCodec { return e.tokenBytes(id) }
        if let b = self as? BoundedCodec { return b.codec.bytes(ofToken: id) }
        return tokenBytesDefault(id)
    }

    /// Token lookup by text, when the codec supports it.
    func lookup(_ text: String) -> Int? {
        if let e = self as? ExtendedPromptCodec { return e.tokenId(for: text) }
        if let b = self as? BoundedCodec { return b.codec.lookup(text) }
        return nil
    }

    /// The chat template's source, when known.
    var templateSource: String? {
        if let e = self as? ExtendedPromptCodec { return e.chatTemplateSource }
        if let b = self as? BoundedCodec { return b.codec.templateSource }
        return nil
    }

    /// The codec that renders JSON messages with tools, if any.
    var extended: ExtendedPromptCodec? {
        if let e = self as? ExtendedPromptCodec { return e }
        if let b = self as? BoundedCodec { return b.codec.extended }
        return nil
    }
}
