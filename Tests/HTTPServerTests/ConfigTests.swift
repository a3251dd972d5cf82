import Foundation
import Testing
@testable import HTTPServer

/// A class so that `deinit` removes the files a test wrote (Swift Testing makes one instance per test).
@Suite final class ConfigTests {
    private var files: [String] = []

    deinit { for file in files { try? FileManager.default.removeItem(atPath: file) } }

    /// Writes `text` to a fresh temporary `.toml` file, removed when the test ends.
    func temp(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "moe-config-\(UUID().uuidString).toml"
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        files.append(path)
        return path
    }

    @Test func defaultsMatchTheStruct() throws {
        #expect(try ConfigLoader.load(file: nil, environment: [:]) == ServerConfig())
    }

    @Test func precedenceFileThenEnvironmentThenFlags() throws {
        let file = try temp("port = 9000\nhost = \"0.0.0.0\"\nmax_body_size = \"1MiB\"\napi_keys = [\"k1\"]\nidle_timeout = 5\n")
        let fromFile = try ConfigLoader.load(file: file, environment: [:])
        #expect(fromFile.port == 9000 && fromFile.host == "0.0.0.0")
        #expect(fromFile.limits.maxBodyBytes == 1 << 20)
        #expect(fromFile.apiKeys == ["k1"])
        #expect(fromFile.limits.idleTimeout == 5)
        let env = try ConfigLoader.load(file: file, environment: ["MOE_PORT": "9001", "MOE_API_KEYS": "a,b"])
        #expect(env.port == 9001 && env.apiKeys == ["a", "b"])
        let flags = try ConfigLoader.load(file: file, environment: ["MOE_PORT": "9001"], overrides: ["port": "9002"])
        #expect(flags.port == 9002)
    }

    @Test func invalidValuesNameTheKey() throws {
        func message(_ body: () throws -> ServerConfig) -> String {
            do { _ = try body(); return "" } catch { return "\(error)" }
        }
        #expect(message { try ConfigLoader.load(file: nil, environment: ["MOE_PORT": "eighty"]) }.contains("'port'"))
        #expect(message { try ConfigLoader.load(file: nil, environment: ["MOE_PORT": "eighty"]) }.contains("MOE_PORT"))
        #expect(message { try ConfigLoader.load(file: nil, environment: [:], overrides: ["max_body_size": "lots"]) }.contains("'max_body_size'"))
        let file = try temp("prot = 1\n")
        #expect(message { try ConfigLoader.load(file: file, environment: [:]) }.contains("'prot'"))
        let typed = try temp("log_requests = \"maybe\"\n")
        #expect(message { try ConfigLoader.load(file: typed, environment: [:]) }.contains("'log_requests'"))
        let broken = try temp("port = = 1\n")
        #expect(message { try ConfigLoader.load(file: broken, environment: [:]) }.contains("invalid TOML"))
    }

    @Test func sizes() {
        #expect(ConfigLoader.parseSize("512MiB") == 512 << 20)
        #expect(ConfigLoader.parseSize("4GiB") == 4 << 30)
        #expect(ConfigLoader.parseSize("4G") == 4 << 30)
        #expect(ConfigLoader.parseSize("1000") == 1000)
        #expect(ConfigLoader.parseSize("4 parsecs") == nil)
    }

    @Test func shippedConfigFilesLoad() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let directory = root.appendingPathComponent("ServerConfig")
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".toml") }
        #expect(names.count >= 6)
        for name in names {
            _ = try ConfigLoader.load(file: directory.appendingPathComponent(name).path, environment: [:])
        }
        let throughput = try ConfigLoader.load(file: directory.appendingPathComponent("throughput-64.toml").path, environment: [:])
        #expect(throughput.runtime.maxSequences == 64 && throughput.maxQueuedRequests == 256)
        #expect(try ConfigLoader.load(file: root.appendingPathComponent("ServerConfig/default.toml").path, environment: [:]) == ServerConfig())
    }

    @Test func memoryBudgetAutoFromFileEnvironmentAndFlags() throws {
        let file = try temp("memory_budget = \"auto\"\n")
        #expect(try ConfigLoader.load(file: file, environment: [:]).memoryBudgetAuto)
        #expect(try ConfigLoader.load(file: nil, environment: ["MOE_MEMORY_BUDGET": "auto"]).memoryBudgetAuto)
        #expect(try ConfigLoader.load(file: nil, environment: [:], overrides: ["memory_budget": "AUTO"]).memoryBudgetAuto)
        // A size given with more precedence turns auto off again.
        let fixed = try ConfigLoader.load(file: file, environment: [:], overrides: ["memory_budget": "2GiB"])
        #expect(!fixed.memoryBudgetAuto && fixed.memoryBudget == 2 << 30)
        #expect(!(try ConfigLoader.load(file: nil, environment: [:]).memoryBudgetAuto))
    }

    @Test func lowBitMissesAutoFromFileEnvironmentAndFlags() throws {
        let file = try temp("low_bit_misses = \"auto\"\n")
        let fromFile = try ConfigLoader.load(file: file, environment: [:])
        #expect(fromFile.lowBitMissesAuto && !fromFile.lowBitMisses)
        #expect(try ConfigLoader.load(file: nil, environment: ["MOE_LOW_BIT_MISSES": "auto"]).lowBitMissesAuto)
        #expect(try ConfigLoader.load(file: nil, environment: [:], overrides: ["low_bit_misses": "AUTO"]).lowBitMissesAuto)
        // on/off given with more precedence turns auto off again.
        let on = try ConfigLoader.load(file: file, environment: [:], overrides: ["low_bit_misses": "on"])
        #expect(on.lowBitMisses && !on.lowBitMissesAuto)
        #expect(!(try ConfigLoader.load(file: nil, environment: [:]).lowBitMissesAuto))
        #expect(throws: (any Error).self) { try ConfigLoader.load(file: nil, environment: ["MOE_LOW_BIT_MISSES": "sometimes"]) }
    }

    @Test func prefetchAutoFromFileEnvironmentAndFlags() throws {
        let file = try temp("prefetch = \"auto\"\n")
        #expect(try ConfigLoader.load(file: file, environment: [:]).runtime.prefetch == "auto")
        #expect(try ConfigLoader.load(file: nil, environment: ["MOE_PREFETCH": "Auto"]).runtime.prefetch == "auto")
        #expect(try ConfigLoader.load(file: file, environment: [:], overrides: ["prefetch": "off"]).runtime.prefetch == "off")
        #expect(try ConfigLoader.load(file: try temp("prefetch = true\n"), environment: [:]).runtime.prefetch == "on")
        #expect(try ConfigLoader.load(file: nil, environment: [:]).runtime.prefetch == nil)
        #expect(throws: (any Error).self) { try ConfigLoader.load(file: nil, environment: ["MOE_PREFETCH": "sometimes"]) }
    }

    @Test func sizesMeanWhatTheCommandLineMeans() throws {
        // One parser: KB/MB/GB are binary here as in `generate --memory-budget`.
        #expect(ConfigLoader.parseSize("4GB") == 4 << 30)
        #expect(ConfigLoader.parseSize("100KB") == 102_400)
        #expect(try ConfigLoader.load(file: nil, environment: ["MOE_MEMORY_BUDGET": "4GB"]).memoryBudget == 4 << 30)
        do {
            _ = try ConfigLoader.load(file: nil, environment: ["MOE_MEMORY_BUDGET": "-4GB"])
            Issue.record("a negative budget loaded")
        } catch {
            #expect("\(error)".contains("memory_budget") && "\(error)".contains("negative"), "\(error)")
        }
    }

    @Test func runtimeKeysComeFromFlagsEnvironmentAndTOMLAlike() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("moe-runtime-keys-\(UUID().uuidString).toml")
        try """
        cache_policy = "lru"
        prefetch = false
        kv_cache_type = "f32"
        reader_threads = 2
        prefetch_min_probability = 0.5
        expert_cache = "64MiB"
        shadow_routing = true
        expert_surrogates = "none"
        """.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let config = try ConfigLoader.load(file: file.path, environment: ["MOE_PREDICTOR": "cross_layer", "MOE_READER_THREADS": "3",
                                                                          "MOE_SURROGATE_SHADOW": "confident"],
                                           overrides: ["prefetch_reads": "1", "max_sequences": "4", "predictor_probes": "none",
                                                       "prefetch_budget": "0", "kv_cache_type": "f16"])
        var expected = RuntimeSettings()
        expected.cachePolicy = "lru"
        expected.prefetch = "off"
        expected.kvCacheType = "f16"
        expected.readerThreads = 3
        expected.prefetchMinProbability = 0.5
        expected.expertCacheBytes = 64 << 20
        expected.predictor = "cross_layer"
        expected.prefetchReads = 1
        expected.maxSequences = 4
        expected.predictorProbes = "none"
        expected.prefetchBudget = 0
        expected.shadowRouting = true
        expected.expertSurrogates = "none"
        expected.surrogateShadow = "confident"
        #expect(config.runtime == expected)
        #expect(try ConfigLoader.load(file: nil, environment: ["MOE_SHADOW_ROUTING": "off"]).runtime.shadowRouting == false)
        #expect(try ConfigLoader.load(file: nil, environment: [:]).runtime.shadowRouting == nil)
        #expect(throws: ConfigError.self) { try ConfigLoader.load(file: nil, environment: ["MOE_SHADOW_ROUTING": "sometimes"]) }
        #expect(throws: ConfigError.self) { try ConfigLoader.load(file: nil, environment: ["MOE_PREFETCH_MIN_PROBABILITY": "2"]) }
        #expect(throws: ConfigError.self) { try ConfigLoader.load(file: nil, environment: ["MOE_READER_THREADS": "0"]) }
    }
}

/// `skip_missing_below` (opt-in lossy mode, docs/LOSSY.md): off unless set, from any source.
@Suite struct SkipMissingBelowConfigTests {
    @Test func offByDefaultAndReadFromEnvironmentAndFlags() throws {
        #expect(try ConfigLoader.load(file: nil, environment: [:]).skipMissingBelow == nil)
        #expect(try ConfigLoader.load(file: nil, environment: ["MOE_SKIP_MISSING_BELOW": "0.1"]).skipMissingBelow == 0.1)
        #expect(try ConfigLoader.load(file: nil, environment: [:], overrides: ["skip_missing_below": "0.25"]).skipMissingBelow == 0.25)
        #expect(throws: ConfigError.self) { try ConfigLoader.load(file: nil, environment: ["MOE_SKIP_MISSING_BELOW": "2"]) }
    }
}

/// `prompt_cache_partial`: unset (the runtime's `exact`) unless given, from the file, `MOE_*` or a flag.
@Suite struct PromptCachePartialConfigTests {
    @Test func unsetByDefaultAndReadFromEverySource() throws {
        #expect(try ConfigLoader.load(file: nil, environment: [:]).runtime.promptCachePartial == nil)
        #expect(try ConfigLoader.load(file: nil, environment: ["MOE_PROMPT_CACHE_PARTIAL": "off"]).runtime.promptCachePartial == "off")
        #expect(try ConfigLoader.load(file: nil, environment: ["MOE_PROMPT_CACHE_PARTIAL": "off"],
                                      overrides: ["prompt_cache_partial": "always"]).runtime.promptCachePartial == "always")
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("prompt-cache-partial-\(getpid()).toml")
        try #"prompt_cache_partial = "exact""#.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        #expect(try ConfigLoader.load(file: file.path, environment: [:]).runtime.promptCachePartial == "exact")
    }
}

/// `context_size`: unset (the model's trained context) unless given; bounded below.
@Suite struct ContextSizeConfigTests {
    @Test func readFromEverySourceAndBounded() throws {
        #expect(try ConfigLoader.load(file: nil, environment: [:]).runtime.contextSize == nil)
        #expect(try ConfigLoader.load(file: nil, environment: ["MOE_CONTEXT_SIZE": "2048"]).runtime.contextSize == 2048)
        #expect(try ConfigLoader.load(file: nil, environment: [:], overrides: ["context_size": "4096"]).runtime.contextSize == 4096)
        #expect(throws: ConfigError.self) { try ConfigLoader.load(file: nil, environment: ["MOE_CONTEXT_SIZE": "4"]) }
    }
}
