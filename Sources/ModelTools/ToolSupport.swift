import Dispatch
import Foundation

/// A benchmark or tool failure a user can act on: one line, printed by the command that ran it.
public struct ToolError: Error, CustomStringConvertible, Sendable {
    public let description: String
    /// An error saying `description`.
    public init(_ description: String) { self.description = description }
}

/// Writes one line of progress to stderr (the tools' JSON goes to stdout, through the command).
func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

/// Seconds on the monotonic clock.
func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
