import ArgumentParser
import Foundation
import ModelFormats
import MoEModels

/// `--model PATH`, shared by every command that runs a model.
struct ModelOption: ParsableArguments {
    @Option(name: .long, help: "A Hugging Face model directory, a packed expert store or a GGUF file (default: the bundled demo model).")
    var model: String?

    /// The model directory to use: the given path, or the bundled demo model.
    func resolvedURL() throws -> URL {
        if let model { return URL(fileURLWithPath: model) }
        if let demo = BundledModel.location { return demo }
        throw CommandError("no --model given and the bundled demo model was not found (set MOE_DEMO_MODEL or pass --model)")
    }
}

/// Where the bundled demo model lives: `$MOE_DEMO_MODEL`, else `DemoModel/` in the source
/// tree this binary was built from.
enum BundledModel {
    static var location: URL? {
        if let path = ProcessInfo.processInfo.environment["MOE_DEMO_MODEL"] { return URL(fileURLWithPath: path) }
        let sourceRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let demo = sourceRoot.appendingPathComponent("DemoModel")
        return FileManager.default.fileExists(atPath: demo.path) ? demo : nil
    }
}

/// A user-facing failure: printed as one line on stderr, exit status 1.
struct CommandError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Parses `1,2,3` into token ids.
func parseTokenList(_ text: String, option: String) throws -> [Int] {
    let parts = text.split(separator: ",", omittingEmptySubsequences: false)
    let ids = parts.map { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard !parts.isEmpty, ids.allSatisfy({ $0 != nil }) else {
        throw CommandError("\(option): expected comma-separated integers such as 1,2,3, got '\(text)'")
    }
    return ids.map { $0! }
}

/// Writes `value` as one line of JSON on stdout.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.withoutEscapingSlashes]
    encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    var data = try encoder.encode(value)
    data.append(0x0A)
    FileHandle.standardOutput.write(data)
}

/// Runs `body`, turning any error into one line on stderr and a non-zero exit.
func reportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let error as ExitCode { throw error } catch {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        throw ExitCode.failure
    }
}

/// Opens the model at `url` for running: an expert store (has manifest.json) or a checkpoint.
func openModel(at url: URL) throws -> TransformerModel {
    try ModelLoader.load(at: url)
}

/// The prompts of a file holding one JSON string per line (blank lines skipped).
func readPromptFile(_ path: String) throws -> [String] {
    let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").filter { !$0.isEmpty }
    return try lines.enumerated().map { index, line -> String in
        guard let text = try? JSONDecoder().decode(String.self, from: Data(line.utf8)) else {
            throw CommandError("\(path):\(index + 1): expected a JSON string")
        }
        return text
    }
}
