import Foundation
import Testing

/// `--prompt-cache-partial` on the real binary: `off` keeps whole-prompt hits and refuses a
/// shared prefix, the default (`exact`) reuses the prefix on the demo model (whose prefill the
/// engine's probe finds bit-exact), and an unknown value stops the server at start naming the key.
@Suite(.serialized) struct PromptCachePartialEndToEndTests {
    /// `timings.cache_n` of a greedy `/completion` of `prompt`.
    static func cachedTokens(_ server: RunningServer, _ prompt: String) throws -> Int {
        let body = #"{"prompt": "\#(prompt)", "n_predict": 4, "temperature": 0}"#
        let reply = try server.curl("/completion", ["-d", body])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any], "\(reply)")
        let timings = try #require(json["timings"] as? [String: Any], "\(reply)")
        return try #require(timings["cache_n"] as? Int, "\(reply)")
    }

    static let first = "def fibonacci(n):\\n    if n < 2:\\n        return n\\n    return"
    static let longer = first + " fibonacci(n - 1) + fibonacci(n - 2)\\n\\nprint(fibonacci(10))"

    @Test func offKeepsWholeHitsAndRefusesSharedPrefixes() throws {
        let server = try RunningServer(arguments: ["--memory-budget", "80MiB", "--prompt-cache-partial", "off"])
        #expect(try Self.cachedTokens(server, Self.first) == 0)
        #expect(try Self.cachedTokens(server, Self.first) > 0, "a whole-prompt hit is still taken")
        #expect(try Self.cachedTokens(server, Self.longer) == 0, "a shared prefix is not reused with off")
        #expect(server.stop() == 0)
    }

    @Test func theDefaultReusesASharedPrefix() throws {
        let server = try RunningServer(arguments: ["--memory-budget", "80MiB"])
        #expect(try Self.cachedTokens(server, Self.first) == 0)
        #expect(try Self.cachedTokens(server, Self.longer) > 0)
        #expect(server.stop() == 0)
    }

    @Test func anUnknownValueStopsTheServerNamingTheKey() throws {
        let result = try MemoryBudgetEndToEndTests.run(["serve", "--port", "0", "--prompt-cache-partial", "sometimes"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("prompt_cache_partial"), "\(result.stderr)")
        #expect(result.stderr.contains("exact, always, off"), "\(result.stderr)")
    }
}

/// `--context-size` on the real binary: the positions a sequence may reach, reported as `/props`'
/// `n_ctx`, enforced on prompts (400) and replies (`length`). (That the plan then reserves less KV
/// and leaves the expert cache more is `RuntimeTests.aSmallerContextLeavesTheExpertCacheMore`: the
/// runtime's own footprint is measured per process, so two servers' plans differ by more than the
/// demo's KV.)
@Suite(.serialized) struct ContextSizeEndToEndTests {
    static func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "\(text)")
    }

    @Test func aSmallContextBoundsPromptsAndReplies() throws {
        let wide = try RunningServer(arguments: ["--memory-budget", "80MiB"])
        let wideProps = try Self.json(try wide.curl("/props"))
        let trained = try #require((wideProps["default_generation_settings"] as? [String: Any])?["n_ctx"] as? Int
                                   ?? (wideProps["meta"] as? [String: Any])?["n_ctx"] as? Int ?? wideProps["n_ctx"] as? Int)
        #expect(wide.stop() == 0)

        let server = try RunningServer(arguments: ["--memory-budget", "80MiB", "--context-size", "64"])
        let props = try server.curl("/props")
        #expect(props.contains("\"n_ctx\":64") || props.contains("\"n_ctx\": 64"), "\(props)")
        #expect(trained > 64)
        let long = String(repeating: "word ", count: 200)
        let refused = try server.curl("/v1/completions", ["-d", #"{"prompt": "\#(long)", "max_tokens": 4}"#])
        #expect(refused.contains("context"), "\(refused)")
        let reply = try Self.json(try server.curl("/v1/completions", ["-d", #"{"prompt": "def fibonacci(n):", "max_tokens": 200, "temperature": 0, "ignore_eos": true}"#]))
        let choice = try #require((reply["choices"] as? [[String: Any]])?.first)
        #expect(choice["finish_reason"] as? String == "length")
        let usage = try #require(reply["usage"] as? [String: Any])
        #expect((usage["total_tokens"] as? Int ?? 999) <= 64, "\(usage)")
        #expect(server.stop() == 0)
    }
}
