import ArgumentParser
import Foundation
import ExpertCache
import HTTPServer
import InferenceEngine
import Runtime
import ServiceNotify

/// `moe-serve serve`: the HTTP server. Every configuration key can come from `--config FILE`
/// (TOML), from `MOE_<KEY>` or from the flag below; flags win over the environment, which wins
/// over the file.
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the OpenAI- and llama.cpp-compatible HTTP API.",
        discussion: "Every flag can also be set in the TOML file given by --config, or as MOE_<KEY> (for example MOE_PORT=9000).")

    @Option(help: "TOML configuration file (see ServerConfig/default.toml).") var config: String?
    @Option(help: "Model directory or expert store (default: the bundled demo model).") var model: String?
    @Option(help: "Address to bind (default 127.0.0.1).") var host: String?
    @Option(help: "TCP port (default 8080; 0 picks a free one).") var port: String?
    @Option(name: .customLong("memory-budget"), help: "RAM for the whole process (runtime, dense weights, scratch, KV cache, expert cache), e.g. 4GiB; units are binary (4G = 4GB = 4GiB). The expert cache gets what remains. auto: start from half of MemAvailable (or of what the cgroup memory limit leaves, when tighter) and let the expert cache follow free memory and memory pressure.") var memoryBudget: String?
    @Option(name: .customLong("expert-cache"), help: "Bytes of experts to keep in RAM (overrides the share --memory-budget leaves them).") var expertCache: String?
    @Option(name: .customLong("cache-policy"), help: "Expert cache eviction policy (default sequence; also learned, lfu, lru, lrfu, fate, hotset).") var cachePolicy: String?
    @Option(help: "Predictive prefetch of experts: on, off, or auto (the default: decode-step blocks with and without it are timed and the faster kept).") var prefetch: String?
    @Option(help: "Predictor configuration (default cross_layer_deep with the model's probes, else cross_layer).") var predictor: String?
    @Option(name: .customLong("predictor-probes"), help: "Fitted predictor probes file, or none (default: the model's own).") var predictorProbes: String?
    @Option(name: .customLong("kv-cache-type"), help: "KV cache storage: f16 (default) or f32.") var kvCacheType: String?
    @Option(name: .customLong("reader-threads"), help: "Concurrent expert reads (default 4).") var readerThreads: String?
    @Option(name: .customLong("io-engine"), help: "Engine of expert reads: auto (default: io_uring where the kernel allows, else threads), io_uring or threads.") var ioEngine: String?
    @Option(name: .customLong("prefetch-reads"), help: "Prefetch reads that may run at once (0, the default: no separate bound).") var prefetchReads: String?
    @Option(name: .customLong("prefetch-min-probability"), help: "Prefetch only guesses at least this probable (default 0.1, or 0.9 with selection probes).") var prefetchMinProbability: String?
    @Option(name: .customLong("prefetch-budget"), help: "Prefetched, unused experts each layer may hold (0: no bound; default the model's top-k).") var prefetchBudget: String?
    @Option(name: .customLong("shadow-routing"), help: "Run the next MoE layer's attention and router while a decode step's misses load, and prefetch what it chooses: on or off (default on).") var shadowRouting: String?
    @Option(name: .customLong("expert-surrogates"), help: "Linear stand-ins for the experts' outputs that the shadow uses, a file or none (default: the model's own expert-surrogates.safetensors).") var expertSurrogates: String?
    @Option(name: .customLong("surrogate-shadow"), help: "How the shadow uses expert surrogates: fill (default: they stand in for the experts still loading), off, early, both or confident.") var surrogateShadow: String?
    @Option(name: .customLong("max-sequences"), help: "Sequences decoded together in one batch (default 8).") var maxSequences: String?
    @Option(name: .customLong("context-size"), help: "Positions a sequence may reach, prompt and reply (default and upper bound: the model's trained context); the memory plan reserves KV for this many per sequence, like llama-server's -c.") var contextSize: String?
    @Option(name: .customLong("prompt-cache-partial"), help: "Reuse of a cached prompt prefix: exact (default: when a probe finds the model's prefill bit-exact), always, or off (whole-prompt hits only).") var promptCachePartial: String?
    @Option(name: .customLong("api-keys"), help: "Comma-separated accepted Bearer keys.") var apiKeys: String?
    @Option(name: .customLong("cors-allow-origins"), help: "Comma-separated CORS origins ('*' for any).") var corsAllowOrigins: String?
    @Option(name: .customLong("max-body-size"), help: "Largest request body, e.g. 8MiB.") var maxBodySize: String?
    @Option(name: .customLong("max-header-size"), help: "Largest request head, e.g. 16KiB.") var maxHeaderSize: String?
    @Option(name: .customLong("header-timeout"), help: "Seconds to receive request headers.") var headerTimeout: String?
    @Option(name: .customLong("request-timeout"), help: "Seconds to receive a whole request.") var requestTimeout: String?
    @Option(name: .customLong("idle-timeout"), help: "Seconds an idle connection stays open.") var idleTimeout: String?
    @Option(name: .customLong("max-pipelined"), help: "Pipelined requests read ahead per connection.") var maxPipelined: String?
    @Option(name: .customLong("max-requests-per-connection"), help: "Requests served on one keep-alive connection.") var maxRequestsPerConnection: String?
    @Option(name: .customLong("max-request-memory"), help: "Request bytes held at once across connections (0: derived).") var maxRequestMemory: String?
    @Option(name: .customLong("max-queued-requests"), help: "Generation requests admitted at once.") var maxQueuedRequests: String?
    @Option(name: .customLong("max-connections"), help: "Open connections.") var maxConnections: String?
    @Option(name: .customLong("retry-after"), help: "Seconds in Retry-After when overloaded.") var retryAfter: String?
    @Option(name: .customLong("shutdown-grace-period"), help: "Seconds running requests get after SIGTERM.") var shutdownGracePeriod: String?
    @Option(name: .customLong("log-requests"), help: "true to log one line per request on stderr.") var logRequests: String?
    @Option(name: .customLong("skip-missing-below"), help: "Lossy, off by default: skip missing experts whose router weight is below this (docs/LOSSY.md).") var skipMissingBelow: String?
    @Option(name: .customLong("low-bit-misses"), help: "Lossy, off by default: on to run experts missing from RAM from the store's low-bit copies; auto to choose from the disk's measured bandwidth (docs/LOSSY.md).") var lowBitMisses: String?

    /// Flag values by configuration key.
    var overrides: [String: String] {
        let pairs: [(String, String?)] = [
            ("model", model), ("host", host), ("port", port), ("memory_budget", memoryBudget), ("api_keys", apiKeys),
            ("cors_allow_origins", corsAllowOrigins), ("max_body_size", maxBodySize), ("max_header_size", maxHeaderSize),
            ("header_timeout", headerTimeout), ("request_timeout", requestTimeout), ("idle_timeout", idleTimeout),
            ("max_pipelined", maxPipelined), ("max_requests_per_connection", maxRequestsPerConnection),
            ("max_request_memory", maxRequestMemory), ("max_queued_requests", maxQueuedRequests), ("max_connections", maxConnections),
            ("retry_after", retryAfter), ("shutdown_grace_period", shutdownGracePeriod), ("log_requests", logRequests),
            ("expert_cache", expertCache), ("cache_policy", cachePolicy), ("prefetch", prefetch), ("predictor", predictor),
            ("predictor_probes", predictorProbes), ("kv_cache_type", kvCacheType), ("reader_threads", readerThreads), ("io_engine", ioEngine),
            ("prefetch_reads", prefetchReads), ("prefetch_min_probability", prefetchMinProbability),
            ("prefetch_budget", prefetchBudget), ("shadow_routing", shadowRouting), ("expert_surrogates", expertSurrogates), ("surrogate_shadow", surrogateShadow), ("max_sequences", maxSequences), ("prompt_cache_partial", promptCachePartial),
            ("context_size", contextSize),
            ("skip_missing_below", skipMissingBelow), ("low_bit_misses", lowBitMisses),
        ]
        var out: [String: String] = [:]
        for (key, value) in pairs { if let value { out[key] = value } }
        return out
    }

    func run() throws {
        try reportingErrors {
            let file = config ?? ProcessInfo.processInfo.environment["MOE_CONFIG"]
            var loadedConfig = try ConfigLoader.load(file: file, overrides: overrides)
            if loadedConfig.memoryBudgetAuto, let available = MemoryReading.sample()?.availableBytes {
                // Where `auto` starts; the runtime bounds it by the plan's floor and every expert cached.
                loadedConfig.memoryBudget = AutoMemoryBudget.initialBudgetBytes(availableBytes: available)
            }
            let serverConfig = loadedConfig
            // Checked before the server listens, so a bad runtime setting stops it at start.
            let specification = try ServeBackend.specification(serverConfig)
            let server = APIServer(config: serverConfig)
            // Under systemd with Type=notify: ready once the model is loaded, stopping on drain.
            let notifier = SystemdNotifier(environment: ProcessInfo.processInfo.environment)
            if let notifier { server.onDrain { notifyQuietly(notifier, "STOPPING=1\nSTATUS=draining") } }
            try server.start(handleSignals: true)
            FileHandle.standardError.write(Data("moe-serve listening on http://\(serverConfig.host):\(server.port)\n".utf8))
            let metrics = server.metrics
            let loadFailed = LoadFailureFlag()
            let loaded = LoadedRuntime()
            Thread.detachNewThread {
                do {
                    let (backend, _, runtime) = try ServeBackend.make(specification, config: serverConfig, metrics: metrics)
                    loaded.set(runtime)
                    server.attach(backend)
                    FileHandle.standardError.write(Data("model loaded; ready\n".utf8))
                    if let notifier { notifyQuietly(notifier, "READY=1\nSTATUS=model loaded; serving") }
                    // The first prompts then find their expert buffers' pages already faulted in.
                    runtime.startWarmingExpertBuffers { warming in
                        FileHandle.standardError.write(Data("\(warming.summary)\n".utf8))
                    }
                } catch {
                    FileHandle.standardError.write(Data("error: cannot load the model: \(error)\n".utf8))
                    loadFailed.set()
                    server.shutdown()
                }
            }
            server.waitUntilStopped()
            // The sampling thread of `--memory-budget auto` must not resize the cache while the process exits.
            loaded.runtime?.autoBudget?.stop()
            FileHandle.standardError.write(Data("moe-serve stopped\n".utf8))
            // A model that cannot load is a failure: supervisors (systemd Restart=on-failure) must see it.
            if loadFailed.isSet { throw ExitCode.failure }
        }
    }
}

/// Sends a systemd notification; a failure is logged, never fatal (the service still serves).
private func notifyQuietly(_ notifier: SystemdNotifier, _ state: String) {
    do { try notifier.notify(state) } catch {
        FileHandle.standardError.write(Data("warning: \(error)\n".utf8))
    }
}

/// The runtime the loading thread opened, read after the server stops.
private final class LoadedRuntime: @unchecked Sendable {
    private let lock = NSLock()
    private var value: ModelRuntime?
    func set(_ runtime: ModelRuntime) { lock.lock(); value = runtime; lock.unlock() }
    var runtime: ModelRuntime? { lock.lock(); defer { lock.unlock() }; return value }
}

/// Set by the loading thread when the model cannot load, read after the server stops.
private final class LoadFailureFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}
