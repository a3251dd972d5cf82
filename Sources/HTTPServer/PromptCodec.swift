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
