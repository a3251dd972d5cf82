import Foundation
import Testing

/// `serve --skip-missing-below` (docs/LOSSY.md) over loopback: with the demo model's experts
/// mostly out of a small expert cache and prefetch off, greedy completions skip weak missing
/// experts and `/metrics` counts the tokens that did; without the option the same requests miss
/// just as often and skip nothing.
@Suite(.serialized) struct WeakExpertSkippingEndToEndTests {
    /// A quarter of the demo's experts fit; the weight floor is high enough that a top-2 token's
    /// second expert, when missing, is usually left out.
    static let arguments = ["--expert-cache", "3840KiB", "--prefetch", "off"]
    static let prompts = ["def fibonacci(n):", "import numpy as np\n", "class Stack:\n    def push(self, item):"]

    /// Sends the prompts, then reads `/metrics` until its (once a second) sample shows expert
    /// cache misses, and returns that text.
    static func serve(extra: [String]) throws -> (metrics: String, status: Int32) {
        let server = try RunningServer(arguments: arguments + extra)
        for prompt in prompts {
            let body = try JSONSerialization.data(withJSONObject: ["prompt": prompt, "max_tokens": 16, "temperature": 0])
            let response = try server.curl("/v1/completions", ["-H", "Content-Type: application/json", "-d", String(decoding: body, as: UTF8.self)])
            let json = try JSONSerialization.jsonObject(with: Data(response.utf8)) as? [String: Any]
            let choices = json?["choices"] as? [[String: Any]]
            #expect(choices?.first?["text"] as? String != nil, "no completion: \(response)")
        }
        let metrics = try metricsShowingMisses(server)
        return (metrics, server.stop())
    }

    /// `/metrics`, read again until its (once a second) sample shows expert cache misses, or for
    /// at most 15 seconds.
    static func metricsShowingMisses(_ server: RunningServer) throws -> String {
        var metrics = try server.curl("/metrics")
        let deadline = Date().addingTimeInterval(15)
        while (value("moe_expert_cache_misses_total", in: metrics) ?? 0) == 0, Date() < deadline {
            Thread.sleep(forTimeInterval: 0.5)
            metrics = try server.curl("/metrics")
        }
        return metrics
    }

    /// The value of the unlabelled counter `name`, nil when it is not exported.
    static func value(_ name: String, in metrics: String) -> Double? {
        for line in metrics.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.split(separator: " ").last!)
        }
        return nil
    }

    @Test func skippedTokensAreCountedOnlyWhenSkippingIsOn() throws {
        let on = try Self.serve(extra: ["--skip-missing-below", "0.5"])
        #expect(on.status == 0)
        #expect((Self.value("moe_expert_cache_misses_total", in: on.metrics) ?? 0) > 0)
        let skipped = try #require(Self.value("moe_expert_skipped_tokens_total", in: on.metrics), "metrics: \(on.metrics)")
        #expect(skipped > 0)

        let off = try Self.serve(extra: [])
        #expect(off.status == 0)
        #expect(Self.value("moe_expert_skipped_tokens_total", in: off.metrics) ?? 0 == 0)
        // Experts were missing all the same: skipping had something to skip.
        #expect((Self.value("moe_expert_cache_misses_total", in: off.metrics) ?? 0) > 0)
        print("skip-missing-below 0.5: \(Int(skipped)) tokens skipped; off: 0, misses \(Int(Self.value("moe_expert_cache_misses_total", in: off.metrics) ?? 0))")
    }
}
