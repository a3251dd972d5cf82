/// Everything that can be wrong with a model on disk. Each message names the file and, where
/// there is one, the tensor, so that the user can act on the one line printed.
public struct ModelFormatError: Error, CustomStringConvertible, Sendable {
    /// The full one-line message.
    public let description: String

    /// An error with `message`.
    public init(_ message: String) { description = message }

    /// An error about `file`.
    public static func file(_ file: String, _ message: String) -> ModelFormatError {
        ModelFormatError("\(file): \(message)")
    }

    /// An error about tensor `tensor` in `file`.
    public static func tensor(_ tensor: String, in file: String, _ message: String) -> ModelFormatError {
        ModelFormatError("\(file): tensor '\(tensor)': \(message)")
    }
}
