import Foundation
import Testing

/// The real server with faults injected into its expert reads, turned on and off while it runs
/// (`MOE_FAULTS=@FILE`): with a fault on, a request fails with a JSON error naming the expert;
/// the server stays up, and with the fault off the next request works.
@Suite(.serialized) struct FaultInjectionEndToEndTests {
    @Test func failedExpertReadsFailTheRequestAndTheServerServesTheNext() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("moe-faults-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let faults = dir.appendingPathComponent("faults")
        try Data().write(to: faults)
        let server = try RunningServer(arguments: ["--memory-budget", "80MiB"], environment: ["MOE_FAULTS": "@\(faults.path)"])
        let body = #"{"prompt": "def fibonacci(n):", "max_tokens": 8, "temperature": 0}"#
        let healthy = try ServeEndToEndTests.text(try server.curl("/v1/completions", ["-d", body]))
        #expect(!healthy.isEmpty)

        struct ErrorBody: Decodable { struct Inner: Decodable { let message: String }; let error: Inner }
        for (fault, expected) in [("read_error=1", "Input/output error"), ("short_read=1", "short read"), ("corrupt_blob=1", "checksum mismatch")] {
            try Data(fault.utf8).write(to: faults)
            let failed = try server.curl("/v1/completions", ["-w", "\n%{http_code}", "-d", body])
            let lines = failed.split(separator: "\n")
            #expect(lines.last == "500", "\(fault): \(failed)")
            let json = lines.dropLast().joined(separator: "\n")
            let message = (try? JSONDecoder().decode(ErrorBody.self, from: Data(json.utf8)))?.error.message ?? "<not a JSON error: \(json)>"
            #expect(message.contains(expected) && message.contains("expert"), "\(fault): \(message)")
            #expect(try server.curl("/health").contains("ok"), "\(fault)")

            try Data().write(to: faults)
            let next = try server.curl("/v1/completions", ["-d", body])
            #expect((try? ServeEndToEndTests.text(next)) == healthy, "\(fault), then no fault: \(next)")
        }
        #expect(server.stop() == 0)
    }
}
