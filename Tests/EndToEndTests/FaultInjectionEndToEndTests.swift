import Foundation
import Testing

/// The real server with a one-shot fault in its expert reads (`MOE_FAULTS`): the request whose
/// step hits the fault fails with a JSON error, the server stays up, and the next request works.
@Suite(.serialized) struct FaultInjectionEndToEndTests {
    @Test(arguments: [("read_error=once", "Input/output error"), ("short_read=once", "short read"),
                      ("corrupt_blob=once", "checksum mismatch")])
    func aFailedExpertReadFailsOneRequestAndTheServerServesTheNext(fault: String, expected: String) throws {
        let server = try RunningServer(arguments: ["--memory-budget", "80MiB"], environment: ["MOE_FAULTS": fault])
        let body = #"{"prompt": "def fibonacci(n):", "max_tokens": 8, "temperature": 0}"#
        let failed = try server.curl("/v1/completions", ["-w", "\n%{http_code}", "-d", body])
        let status = failed.split(separator: "\n").last.map(String.init)
        #expect(status == "500", "\(fault): \(failed)")
        struct ErrorBody: Decodable { struct Inner: Decodable { let message: String }; let error: Inner }
        let json = String(failed.dropLast(4))
        let message = try JSONDecoder().decode(ErrorBody.self, from: Data(json.utf8)).error.message
        #expect(message.contains(expected), "\(fault): \(message)")
        #expect(message.contains("expert"), "\(fault): \(message)")

        #expect(try server.curl("/health").contains("ok"))
        let next = try server.curl("/v1/completions", ["-d", body])
        #expect(!(try ServeEndToEndTests.text(next)).isEmpty, "\(fault): \(next)")
        #expect(server.stop() == 0)
    }
}
