import ArgumentParser
import Foundation
import HTTPServer
import InferenceEngine

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
    @Option(name: .customLong("memory-budget"), help: "Expert cache budget, e.g. 4GiB.") var memoryBudget: String?
    @Option(name: .customLong("api-keys"), help: "Comma-separated accepted Bearer keys.") var apiKeys: String?
    @Option(name: .customLong("cors-allow-origins"), help: "Comma-separated CORS origins ('*' for any).") var corsAllowOrigins: String?
    @Option(name: .customLong("max-body-size"), help: "Largest request body, e.g. 8MiB.") var maxBodySize: String?
    @Option(name: .customLong("max-header-size"), help: "Largest request head, e.g. 16KiB.") var maxHeaderSize: String?
    @Option(name: .customLong("header-timeout"), help: "Seconds to receive request headers.") var headerTimeout: String?
    @Option(name: .customLong("request-timeout"), help: "Seconds to receive a whole request.") var requestTimeout: String?
    @Option(name: .customLong("idle-timeout"), help: "Seconds an idle connection stays open.") var idleTimeout: String?
    @Option(name: .customLong("max-pipelined"), help: "Pipelined requests read ahead per connection.") var maxPipelined: String?
    @Option(name: .customLong("max-queued-requests"), help: "Generation requests admitted at once.") var maxQueuedRequests: String?
    @Option(name: .customLong("max-connections"), help: "Open connections.") var maxConnections: String?
    @Option(name: .customLong("retry-after"), help: "Seconds in Retry-After when overloaded.") var retryAfter: String?
    @Option(name: .customLong("shutdown-grace-period"), help: "Seconds running requests get after SIGTERM.") var shutdownGracePeriod: String?
    @Option(name: .customLong("log-requests"), help: "true to log one line per request on stderr.") var logRequests: String?
    @Option(name: .customLong("skip-missing-below"), help: "Lossy, off by default: skip missing experts whose router weight is below this (docs/LOSSY.md).") var skipMissingBelow: String?

    /// Flag values by configuration key.
    var overrides: [String: String] {
        let pairs: [(String, String?)] = [
            ("model", model), ("host", host), ("port", port), ("memory_budget", memoryBudget), ("api_keys", apiKeys),
            ("cors_allow_origins", corsAllowOrigins), ("max_body_size", maxBodySize), ("max_header_size", maxHeaderSize),
            ("header_timeout", headerTimeout), ("request_timeout", requestTimeout), ("idle_timeout", idleTimeout),
            ("max_pipelined", maxPipelined), ("max_queued_requests", maxQueuedRequests), ("max_connections", maxConnections),
            ("retry_after", retryAfter), ("shutdown_grace_period", shutdownGracePeriod), ("log_requests", logRequests),
            ("skip_missing_below", skipMissingBelow),
        ]
        var out: [String: String] = [:]
        for (key, value) in pairs { if let value { out[key] = value } }
        return out
    }

    func run() throws {
        try reportingErrors {
            let file = config ?? ProcessInfo.processInfo.environment["MOE_CONFIG"]
            let serverConfig = try ConfigLoader.load(file: file, overrides: overrides)
            let server = APIServer(config: serverConfig)
            try server.start(handleSignals: true)
            FileHandle.standardError.write(Data("moe-serve listening on http://\(serverConfig.host):\(server.port)\n".utf8))
            let metrics = server.metrics
            Thread.detachNewThread {
                do {
                    let (backend, _) = try ServeBackend.make(serverConfig, metrics: metrics)
                    server.attach(backend)
                    FileHandle.standardError.write(Data("model loaded; ready\n".utf8))
                } catch {
                    FileHandle.standardError.write(Data("error: cannot load the model: \(error)\n".utf8))
                    server.shutdown()
                }
            }
            server.waitUntilStopped()
            FileHandle.standardError.write(Data("moe-serve stopped\n".utf8))
        }
    }
}
