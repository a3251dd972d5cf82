import Foundation

/// An error raised while loading a tokenizer or rendering a chat template.
///
/// Every message names the file (when known) and the component that failed, so that a user who
/// points the server at an unsupported checkpoint learns what is missing in one line.
public struct TokenizerError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The file the error is about (`tokenizer.json`, `tokenizer_config.json`, `chat_template`), if any.
    public var file: String?
    /// The human-readable reason.
    public var message: String

    /// Creates an error about `file` (if any) with `message`.
    public init(file: String? = nil, _ message: String) {
        self.file = file
        self.message = message
    }

    /// `file: message`, or just the message when no file is known.
    public var description: String {
        if let file { return "\(file): \(message)" }
        return message
    }
}
