import ArgumentParser
import Foundation
import JSONCoding
import ModelFormats
import Runtime
import Tokenization

/// Prints one error line on stderr and exits with status 1.
private func failLine(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data(("error: " + message + "\n").utf8))
    return ExitCode(1)
}

/// Loads the tokenizer of `--model` (a directory with tokenizer.json and optionally tokenizer_config.json).
private func loadTokenizer(_ model: String?) throws -> Tokenizer {
    guard let model = model ?? BundledModel.location?.path else {
        throw failLine("no --model given and the bundled demo model was not found (a directory holding tokenizer.json)")
    }
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: model, isDirectory: &isDirectory) else {
        throw failLine("\(model): no such directory")
    }
    guard isDirectory.boolValue else {
        let url = URL(fileURLWithPath: model)
        guard GGUFModel.isGGUF(at: url) else { throw failLine("\(model): --model must be a directory holding tokenizer.json or a GGUF file") }
        do { return try Tokenizer.load(gguf: GGUFModel(url: url)) } catch { throw failLine("\(error)") }
    }
    do {
        return try Tokenizer.load(directory: URL(fileURLWithPath: model, isDirectory: true))
    } catch {
        throw failLine("\(error)")
    }
}

/// `moe-serve tokenize --model PATH (--text TEXT | --text-file FILE)`: prints `{"ids": [...]}`.
struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Encode text with the model's tokenizer and print {\"ids\": [...]}.")

    @Option(help: "Model directory holding tokenizer.json (and optionally tokenizer_config.json).")
    var model: String?

    @Option(help: "The text to encode.")
    var text: String?

    @Option(name: .customLong("text-file"), help: "Read the text to encode from this file (raw UTF-8).")
    var textFile: String?

    @Flag(name: .customLong("no-special-tokens"), help: "Do not add the special tokens (BOS/EOS) the tokenizer adds.")
    var noSpecialTokens = false

    @Option(name: .customLong("repeat"), help: ArgumentHelp("Encode this many times and report throughput on stderr.", visibility: .hidden))
    var repeatCount: Int = 1

    func run() throws {
        let input: String
        switch (text, textFile) {
        case (let t?, nil):
            input = t
        case (nil, let path?):
            guard let data = FileManager.default.contents(atPath: path) else {
                throw failLine("\(path): cannot read the file")
            }
            // Decoded by the standard library: Foundation's UTF-8 decoding drops U+FEFF.
            let s = String(decoding: data, as: UTF8.self)
            guard s.utf8.elementsEqual(data) else {
                throw failLine("\(path): the file is not valid UTF-8")
            }
            input = s
        case (nil, nil):
            throw failLine("give the text with --text TEXT or --text-file FILE")
        default:
            throw failLine("give only one of --text and --text-file")
        }
        let tokenizer = try loadTokenizer(model)
        // Wall time, and this thread's CPU time (the one-core figure, robust to a busy machine).
        func cpuSeconds() -> Double {
            var t = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
            return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
        }
        let firstStart = cpuSeconds()
        var ids = tokenizer.encode(input, addSpecialTokens: !noSpecialTokens)
        let firstCPU = cpuSeconds() - firstStart
        if repeatCount > 1 {
            FileHandle.standardError.write(Data(String(
                format: "first encode (cold word cache): cpu %.3f s (%.2f MB/s)\n",
                firstCPU, Double(input.utf8.count) / firstCPU / 1e6).utf8))
            let start = DispatchTime.now().uptimeNanoseconds
            let cpuStart = cpuSeconds()
            for _ in 0..<repeatCount { ids = tokenizer.encode(input, addSpecialTokens: !noSpecialTokens) }
            let cpu = cpuSeconds() - cpuStart
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            let bytes = Double(input.utf8.count * repeatCount)
            FileHandle.standardError.write(Data(String(
                format: "encoded %d bytes x %d: wall %.3f s (%.2f MB/s), cpu %.3f s (%.2f MB/s), %d tokens\n",
                input.utf8.count, repeatCount, seconds, bytes / seconds / 1e6, cpu, bytes / cpu / 1e6,
                ids.count).utf8))
        }
        print("{\"ids\":[" + ids.map(String.init).joined(separator: ",") + "]}")
    }
}

/// `moe-serve detokenize --model PATH --ids 1,2,3`: prints `{"text": "..."}`.
struct DetokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "detokenize",
        abstract: "Decode token ids with the model's tokenizer and print {\"text\": \"...\"}.")

    @Option(help: "Model directory holding tokenizer.json (and optionally tokenizer_config.json).")
    var model: String?

    @Option(help: "Comma-separated token ids, e.g. 1,2,3.")
    var ids: String

    @Flag(name: .customLong("skip-special-tokens"), help: "Leave special tokens out of the text.")
    var skipSpecialTokens = false

    func run() throws {
        var parsed: [Int] = []
        for part in ids.split(separator: ",", omittingEmptySubsequences: false) {
            let trimmed = part.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty && ids.trimmingCharacters(in: .whitespaces).isEmpty { continue }
            guard let id = Int(trimmed), id >= 0 else {
                throw failLine("--ids: \(String(reflecting: String(part))) is not a non-negative integer")
            }
            parsed.append(id)
        }
        let tokenizer = try loadTokenizer(model)
        if let bad = parsed.first(where: { $0 >= tokenizer.vocabularySize }) {
            throw failLine("--ids: \(bad) is outside the vocabulary (size \(tokenizer.vocabularySize))")
        }
        let text = tokenizer.decode(parsed, skipSpecialTokens: skipSpecialTokens)
        print("{\"text\":" + JSON.quoted(text) + "}")
    }
}
