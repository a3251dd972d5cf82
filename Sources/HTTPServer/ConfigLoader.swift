import Foundation
import InferenceEngine
import TOMLKit

/// A configuration value that failed validation; the message names the key and where it came from.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    /// One line for stderr.
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Builds a `ServerConfig` from, in increasing precedence: the defaults, a TOML file,
/// environment variables `MOE_<KEY>` and command-line flags `--<key-with-dashes>`.
public enum ConfigLoader {
    /// A raw value before validation: typed from TOML, text from the environment or a flag.
    enum Raw: Sendable {
        case json(JSON)
        case text(String)
    }

    /// How to validate and store one key.
    struct Key: Sendable {
        let name: String
        let help: String
        let apply: @Sendable (inout ServerConfig, Raw) throws -> Void
    }

    /// Every configuration key, in the order of default.toml.
    static let keys: [Key] = [
        Key(name: "host", help: "address to bind (127.0.0.1 keeps the server local)") { c, v in c.host = try string(v) },
        Key(name: "port", help: "TCP port (0 picks a free one)") { c, v in c.port = try int(v, 0...65535) },
        Key(name: "model", help: "model directory or expert store") { c, v in c.model = try string(v) },
        Key(name: "memory_budget", help: "RAM for the whole process: runtime, dense weights, scratch, KV cache and expert cache (512MiB, 4GiB, 4G or bytes; binary units), or auto to follow the machine's free memory") { c, v in
            if case let .text(t) = v, t.lowercased() == "auto" { c.memoryBudgetAuto = true; return }
            if case let .json(j) = v, j.stringValue?.lowercased() == "auto" { c.memoryBudgetAuto = true; return }
            c.memoryBudget = try size(v)
            c.memoryBudgetAuto = false
        },
        Key(name: "expert_cache", help: "bytes of experts in RAM, overriding memory_budget's share") { c, v in c.runtime.expertCacheBytes = try size(v) },
        Key(name: "cache_policy", help: "expert cache eviction policy (sequence, learned, lfu, lru, ...)") { c, v in c.runtime.cachePolicy = try string(v) },
        Key(name: "prefetch", help: "predictive prefetch of experts (on/off), or auto: time decode steps with and without it and keep the faster") { c, v in
            if case let .text(t) = v, t.lowercased() == "auto" {
                c.runtime.prefetch = "auto"
            } else if case let .json(j) = v, j.stringValue?.lowercased() == "auto" {
                c.runtime.prefetch = "auto"
            } else {
                c.runtime.prefetch = try bool(v) ? "on" : "off"
            }
        },
        Key(name: "predictor", help: "predictor configuration (default cross_layer_deep with probes, else cross_layer)") { c, v in c.runtime.predictor = try string(v) },
        Key(name: "predictor_probes", help: "fitted predictor probes file, or none") { c, v in c.runtime.predictorProbes = try string(v) },
        Key(name: "kv_cache_type", help: "KV cache storage: f16 or f32") { c, v in c.runtime.kvCacheType = try string(v) },
        Key(name: "reader_threads", help: "concurrent expert reads") { c, v in c.runtime.readerThreads = try int(v, 1...256) },
        Key(name: "io_engine", help: "engine of expert reads: auto (io_uring where the kernel allows, else threads), io_uring or threads") { c, v in c.runtime.ioEngine = try string(v) },
        Key(name: "prefetch_reads", help: "prefetch reads at once (0: no separate bound)") { c, v in c.runtime.prefetchReads = try int(v, 0...256) },
        Key(name: "shadow_routing", help: "run the next MoE layer's attention and router while misses load, and prefetch what it chooses (on/off)") { c, v in c.runtime.shadowRouting = try bool(v) },
        Key(name: "expert_surrogates", help: "linear stand-ins for the experts' outputs the shadow uses: a file, or none (default: the model's own)") { c, v in c.runtime.expertSurrogates = try string(v) },
        Key(name: "surrogate_shadow", help: "how the shadow uses expert surrogates: fill (default), off, early, both or confident") { c, v in c.runtime.surrogateShadow = try string(v) },
        Key(name: "prefetch_min_probability", help: "prefetch only guesses at least this probable") { c, v in c.runtime.prefetchMinProbability = try probability(v) },
        Key(name: "prefetch_budget", help: "prefetched unused experts per layer (0: no bound)") { c, v in c.runtime.prefetchBudget = try int(v, 0...1_000_000) },
        Key(name: "max_sequences", help: "sequences decoded together in one batch") { c, v in c.runtime.maxSequences = try int(v, 1...1024) },
        Key(name: "context_size", help: "positions a sequence may reach, prompt and reply (default and upper bound: the model's trained context); the KV reservation follows it") { c, v in
            c.runtime.contextSize = try int(v, 16...100_000_000)
        },
        Key(name: "prompt_cache_partial", help: "reuse of a cached prompt prefix: exact (when a probe finds the model's prefill bit-exact), always, or off (whole-prompt hits only)") { c, v in
            c.runtime.promptCachePartial = try string(v)
        },
        Key(name: "api_keys", help: "accepted Bearer keys (comma-separated in env/flags)") { c, v in c.apiKeys = try list(v) },
        Key(name: "cors_allow_origins", help: "CORS origins ('*' for any); empty disables CORS") { c, v in c.corsAllowOrigins = try list(v) },
        Key(name: "max_body_size", help: "largest request body") { c, v in c.limits.maxBodyBytes = try size(v) },
        Key(name: "max_header_size", help: "largest request line + headers") { c, v in c.limits.maxHeaderBytes = try size(v) },
        Key(name: "header_timeout", help: "seconds to receive the headers") { c, v in c.limits.headerTimeout = try seconds(v) },
        Key(name: "request_timeout", help: "seconds to receive a whole request") { c, v in c.limits.requestTimeout = try seconds(v) },
        Key(name: "idle_timeout", help: "seconds an idle keep-alive connection stays open") { c, v in c.limits.idleTimeout = try seconds(v) },
        Key(name: "max_pipelined", help: "pipelined requests read ahead of their responses") { c, v in c.limits.maxPipelined = try int(v, 1...1024) },
        Key(name: "max_requests_per_connection", help: "requests served on one keep-alive connection") { c, v in c.limits.maxRequestsPerConnection = try int(v, 1...1_000_000_000) },
        Key(name: "max_request_memory", help: "request bytes held at once across connections (0: derived)") { c, v in c.maxRequestMemory = try size(v, allowZero: true) },
        Key(name: "max_queued_requests", help: "generation requests admitted at once; more get 503") { c, v in c.maxQueuedRequests = try int(v, 1...1_000_000) },
        Key(name: "max_connections", help: "open connections") { c, v in c.maxConnections = try int(v, 1...1_000_000) },
        Key(name: "retry_after", help: "seconds in Retry-After when overloaded") { c, v in c.retryAfterSeconds = try int(v, 0...3600) },
        Key(name: "shutdown_grace_period", help: "seconds running requests get after SIGTERM") { c, v in c.shutdownGracePeriod = try seconds(v) },
        Key(name: "log_requests", help: "one line per request on stderr") { c, v in c.logRequests = try bool(v) },
        Key(name: "skip_missing_below", help: "lossy: skip missing experts whose router weight is below this (0...1)") { c, v in
            c.skipMissingBelow = try fraction(v)
        },
        Key(name: "low_bit_misses", help: "lossy: run experts missing from RAM from their low-bit copies, promoting the ones that stay in use (on/off), or auto: choose from the disk's measured bandwidth") { c, v in
            if case let .text(t) = v, t.lowercased() == "auto" {
                c.lowBitMisses = false
                c.lowBitMissesAuto = true
            } else if case let .json(j) = v, j.stringValue?.lowercased() == "auto" {
                c.lowBitMisses = false
                c.lowBitMissesAuto = true
            } else {
                c.lowBitMisses = try bool(v)
                c.lowBitMissesAuto = false
            }
        },
    ]

    /// The key names, for flags and docs.
    public static var keyNames: [String] { keys.map(\.name) }

    /// Environment variable of `key`: `MOE_` + upper case.
    public static func environmentName(_ key: String) -> String { "MOE_" + key.uppercased() }

    /// Flag of `key`: `--` + dashes.
    public static func flagName(_ key: String) -> String { "--" + key.replacingOccurrences(of: "_", with: "-") }

    /// Loads the configuration.
    /// - Parameters:
    ///   - file: a TOML file, or nil for none.
    ///   - environment: the process environment (only `MOE_*` keys of known names are read).
    ///   - overrides: values from command-line flags, by key name.
    public static func load(file: String?, environment: [String: String] = ProcessInfo.processInfo.environment,
                            overrides: [String: String] = [:]) throws -> ServerConfig {
        var config = ServerConfig()
        if let file {
            let text: String
            do { text = try String(contentsOfFile: file, encoding: .utf8) } catch {
                throw ConfigError("cannot read config file \(file): \(error.localizedDescription)")
            }
            try apply(toml: text, source: file, to: &config)
        }
        for key in keys {
            if let value = environment[environmentName(key.name)] {
                try apply(key, .text(value), source: "environment variable \(environmentName(key.name))", to: &config)
            }
        }
        for (name, value) in overrides.sorted(by: { $0.key < $1.key }) {
            guard let key = keys.first(where: { $0.name == name }) else { throw ConfigError("unknown configuration key '\(name)'") }
            try apply(key, .text(value), source: "flag \(flagName(name))", to: &config)
        }
        return config
    }

    /// Applies a TOML document (flat keys; an unknown key is an error so typos do not pass silently).
    static func apply(toml text: String, source: String, to config: inout ServerConfig) throws {
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch let error as TOMLParseError {
            throw ConfigError("\(source): invalid TOML at line \(error.source.begin.line): \(error.description)")
        } catch {
            throw ConfigError("\(source): invalid TOML: \(error)")
        }
        // TOMLKit's JSON rendering gives typed values our own JSON type can read.
        let json: JSON
        do { json = try JSON.parse(table.convert(to: .json)) } catch { throw ConfigError("\(source): cannot read: \(error)") }
        guard case let .object(members) = json else { return }
        for (name, value) in members {
            guard let key = keys.first(where: { $0.name == name }) else {
                throw ConfigError("\(source): unknown configuration key '\(name)' (known: \(keyNames.joined(separator: ", ")))")
            }
            try apply(key, .json(value), source: source, to: &config)
        }
    }

    static func apply(_ key: Key, _ value: Raw, source: String, to config: inout ServerConfig) throws {
        do { try key.apply(&config, value) } catch let error as ConfigError {
            throw ConfigError("invalid value for '\(key.name)' (from \(source)): \(error.description)")
        }
    }

    static func describe(_ v: Raw) -> String {
        switch v {
        case let .json(j): return j.serialized()
        case let .text(t): return "'\(t)'"
        }
    }

    static func string(_ v: Raw) throws -> String {
        switch v {
        case let .text(t): return t
        case let .json(j):
            guard let s = j.stringValue else { throw ConfigError("expected a string, got \(describe(v))") }
            return s
        }
    }

    static func int(_ v: Raw, _ range: ClosedRange<Int>) throws -> Int {
        let n: Int?
        switch v {
        case let .text(t): n = Int(t.trimmingCharacters(in: .whitespaces))
        case let .json(j): n = j.intValue
        }
        guard let n, range.contains(n) else {
            throw ConfigError("expected an integer between \(range.lowerBound) and \(range.upperBound), got \(describe(v))")
        }
        return n
    }

    static func seconds(_ v: Raw) throws -> Double {
        let d: Double?
        switch v {
        case let .text(t): d = Double(t.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "s", with: ""))
        case let .json(j): d = j.doubleValue
        }
        guard let d, d.isFinite, d >= 0 else { throw ConfigError("expected a number of seconds >= 0, got \(describe(v))") }
        return d
    }

    static func probability(_ v: Raw) throws -> Double {
        let d: Double?
        switch v {
        case let .text(t): d = Double(t.trimmingCharacters(in: .whitespaces))
        case let .json(j): d = j.doubleValue
        }
        guard let d, (0...1).contains(d) else { throw ConfigError("expected a probability in 0...1, got \(describe(v))") }
        return d
    }

    static func fraction(_ v: Raw) throws -> Float {
        Float(try probability(v))
    }

    static func bool(_ v: Raw) throws -> Bool {
        switch v {
        case let .text(t):
            switch t.lowercased() {
            case "1", "true", "yes", "on": return true
            case "0", "false", "no", "off": return false
            default: throw ConfigError("expected true or false, got \(describe(v))")
            }
        case let .json(j):
            guard let b = j.boolValue else { throw ConfigError("expected true or false, got \(describe(v))") }
            return b
        }
    }

    static func list(_ v: Raw) throws -> [String] {
        switch v {
        case let .text(t):
            return t.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        case let .json(j):
            if let s = j.stringValue { return s.isEmpty ? [] : [s] }
            guard let items = j.arrayValue, items.allSatisfy({ $0.stringValue != nil }) else {
                throw ConfigError("expected an array of strings, got \(describe(v))")
            }
            return items.compactMap(\.stringValue)
        }
    }

    /// Parses a size with the one parser the command line uses too (`ByteSize.parse`: every
    /// unit binary, K = KB = KiB = 1024), or nil when `text` is not one.
    public static func parseSize(_ text: String) -> Int? { parseByteSize(text) }

    static func size(_ v: Raw, allowZero: Bool = false) throws -> Int {
        let parsed: Int?
        switch v {
        case let .text(t):
            do { parsed = try ByteSize.parse(t) } catch { throw ConfigError("\(error)") }
        case let .json(j):
            if let s = j.stringValue {
                do { parsed = try ByteSize.parse(s) } catch { throw ConfigError("\(error)") }
            } else {
                parsed = j.intValue
            }
        }
        guard let parsed, parsed > 0 || (allowZero && parsed == 0) else {
            throw ConfigError("expected a size\(allowZero ? "" : " above zero") such as 512MiB, 4GiB, 4G or a number of bytes (units are binary), got \(describe(v))")
        }
        return parsed
    }
}
