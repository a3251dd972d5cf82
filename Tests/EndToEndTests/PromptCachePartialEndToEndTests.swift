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
