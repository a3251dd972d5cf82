import ArgumentParser
import Foundation
import ModelFormats

/// `moe-serve low-bit-copies STORE [--kind q2]`: adds low-bit copies of every expert to an
/// existing store, for `--low-bit-misses` (docs/LOSSY.md).
struct LowBitCopiesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "low-bit-copies",
        abstract: "Add a low-bit copy of every routed expert to a packed store (for --low-bit-misses).")

    @Argument(help: "The store directory.") var store: String
    @Option(help: "Encoding of the copies: q2 (Q2_K where 256 divides a matrix's width, else Q4_0).") var kind: LowBitKind = .q2

    func run() throws {
        try reportingErrors { try addLowBitCopies(kind, to: URL(fileURLWithPath: store)) }
    }
}

/// Adds `kind` copies to the store at `url`, with progress on stderr and a JSON summary on stdout.
func addLowBitCopies(_ kind: LowBitKind, to url: URL) throws {
    let start = Date()
    var reported = 0
    let summary = try LowBitCopies.add(kind: kind, to: url) { done, total in
        let percent = done * 100 / max(total, 1)
        if percent >= reported + 10 || done == total {
            reported = percent
            printError("low-bit copies: \(done)/\(total) experts")
        }
    }
    struct Output: Encodable {
        var store: String, kind: String, ggml_types: [String], copies: Int, copy_bytes: Int, full_bytes: Int, seconds: Double
    }
    try printJSON(Output(store: url.path, kind: kind.rawValue, ggml_types: summary.section.ggmlTypes, copies: summary.section.blobs.count,
                         copy_bytes: summary.copyBytes, full_bytes: summary.fullBytes, seconds: Date().timeIntervalSince(start)))
}
