import ArgumentParser
import Foundation
import ModelFormats

/// `moe-serve verify STORE`: reads every blob and checks its checksum; names every bad blob.
struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check every blob of an expert store against its checksum; non-zero exit if any is bad.")

    @Argument(help: "The store directory.") var store: String

    struct Output: Encodable {
        var ok: Bool
        var blobs: Int
        var problems: [String]
        var seconds: Double
    }

    func run() throws {
        try reportingErrors {
            let start = DispatchTime.now().uptimeNanoseconds
            let opened = try ExpertStore(url: URL(fileURLWithPath: store), checkDense: false)
            let problems = opened.verify()
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            let count = opened.manifest.experts.blobs.count
            try printJSON(Output(ok: problems.isEmpty, blobs: count, problems: problems, seconds: seconds))
            guard problems.isEmpty else {
                for problem in problems { printError("bad: \(problem)") }
                throw CommandError("\(store): \(problems.count) of \(count) blobs or tensors failed verification")
            }
            printError("ok: \(count) expert blobs and \(opened.manifest.dense.tensors.count) dense tensors verified in \(String(format: "%.2f", seconds)) s")
        }
    }
}
