import Foundation
import Testing

/// The memory budget is real only if the process's resident set keeps to it. These tests
/// write a synthetic OLMoE-shaped store whose experts (100 MB) are four times the expert
/// cache a 100 MiB budget leaves, generate under that budget, and check the peak resident set
/// the process reports (VmHWM) — and, where the machine lets us, that the same generation
/// survives a cgroup memory limit of budget + 5% without the OOM killer.
@Suite(.serialized) struct MemoryBudgetEndToEndTests {
    static let budget = 100 << 20
    static let store: URL = {
        let temporary = FileManager.default.temporaryDirectory
        removeStoresOfEndedRuns(in: temporary)
        let directory = temporary.appendingPathComponent("\(storePrefix)\(getpid())")
        try? FileManager.default.removeItem(at: directory)
        try? FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory.appendingPathComponent("olmoe-small")
    }()

    static let storePrefix = "moe-serve-budget-"

    /// The suite has no end hook, so each run removes the 100 MB stores that earlier test
    /// processes left behind (their pid no longer runs) instead of letting them pile up in /tmp.
    static func removeStoresOfEndedRuns(in temporary: URL) {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: temporary.path)) ?? []
        for name in names where name.hasPrefix(storePrefix) {
            guard let pid = Int32(name.dropFirst(storePrefix.count)), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            try? FileManager.default.removeItem(at: temporary.appendingPathComponent(name))
        }
    }

    /// Runs `moe-serve` with `arguments`, optionally through `/bin/sh -c PREFIX exec ...`.
    static func run(_ arguments: [String], shellPrefix: String? = nil) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        if let shellPrefix {
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            let quoted = ([RunningServer.binary.path] + arguments).map { "'\($0)'" }.joined(separator: " ")
            process.arguments = ["-c", "\(shellPrefix) exec \(quoted)"]
        } else {
            process.executableURL = RunningServer.binary
            process.arguments = arguments
        }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // Drain stderr concurrently so a chatty child never blocks on a full pipe.
        nonisolated(unsafe) var errorData = Data()
        let drained = DispatchSemaphore(value: 0)
        Thread { errorData = err.fileHandleForReading.readDataToEndOfFile(); drained.signal() }.start()
        let output = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        drained.wait()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self), String(decoding: errorData, as: UTF8.self))
    }

    static func ensureStore() throws {
        guard !FileManager.default.fileExists(atPath: store.path) else { return }
        let result = try run(["synth", "--shape", "olmoe-small", "--out", store.path])
        #expect(result.status == 0, "synth failed: \(result.stderr)")
    }

    static let generateArguments: [String] = [
        "generate", "--model", store.path, "--memory-budget", "\(budget)", "--tokens", "5,17,300,42,7,1000,12,99",
        "--max-tokens", "48", "--temperature", "1", "--seed", "3", "--ignore-eos",
    ]

    @Test func theResidentSetStaysWithinTheBudget() throws {
        try Self.ensureStore()
        let result = try Self.run(Self.generateArguments)
        try #require(result.status == 0, "generate failed: \(result.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        let stats = try #require(json["stats"] as? [String: Any])
        let peak = try #require(stats["peak_resident_bytes"] as? Int)
        let plan = try #require(stats["memory"] as? [String: Any])
        let cache = try #require(stats["expert_cache"] as? [String: Any])
        let total = try #require(cache["total"] as? [String: Any])
        let cacheBytes = try #require(plan["expert_cache_bytes"] as? Int)
        // The experts really are offloaded: the cache holds at most a third of them and evicts.
        #expect(cacheBytes * 3 < 100 << 20, "cache of \(cacheBytes) bytes is not a small share of 100 MB of experts")
        #expect((total["evictions"] as? Int ?? 0) > 0)
        #expect(Double(peak) <= Double(Self.budget) * 1.05, "peak RSS \(peak) exceeds the budget \(Self.budget) + 5%")
    }

    /// `serve` warms the expert cache's buffers once it is ready (session 33): it says how many,
    /// they fit the expert cache's share of the budget, and the resident set stays within the
    /// budget through the warming and a completion that then reads experts into them.
    @Test func theServerWarmsItsExpertBuffersWithinTheBudget() throws {
        try Self.ensureStore()
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("moe-serve-warm-\(getpid()).log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: log) }
        let process = Process()
        process.executableURL = RunningServer.binary
        process.arguments = ["serve", "--model", Self.store.path, "--port", "0", "--memory-budget", "\(Self.budget)", "--max-sequences", "1"]
        process.standardError = try FileHandle(forWritingTo: log)
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.interrupt(); process.waitUntilExit() } }
        var text = ""
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline, !text.contains("expert buffers warmed"), !text.contains("error"), process.isRunning {
            Thread.sleep(forTimeInterval: 0.1)
            text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        }
        let line = try #require(text.split(separator: "\n").first { $0.contains("expert buffers warmed") }, "no warming reported: \(text)")
        let buffers = try #require(Int(line.split(separator: " ")[0]))
        // The exact byte count, not the MiB rounded for people: 13.98 MiB prints as 14.
        let bytes = try #require(line.range(of: #", (\d+) bytes\)"#, options: .regularExpression)
            .flatMap { Int(line[$0].filter(\.isNumber)) }, "no byte count in: \(line)")
        #expect(buffers > 0)
        func peakResident() -> Int? {
            let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
            return status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") }
                .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true)[1]) }.map { $0 << 10 }
        }
        let port = try #require(text.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression).map { Int(text[$0].split(separator: ":").last!) ?? 0 })
        let metrics = try curlLoopback(port: port, "/metrics")
        let cacheBudget = try #require(metrics.split(separator: "\n").first { $0.hasPrefix("moe_expert_cache_bytes_budget ") }
            .flatMap { Double($0.split(separator: " ")[1]) })
        #expect(Double(bytes) <= cacheBudget, "\(line) beyond the expert cache's \(cacheBudget) bytes")
        let afterWarming = try #require(peakResident())
        #expect(Double(afterWarming) <= Double(Self.budget) * 1.05, "peak RSS \(afterWarming) after warming exceeds the budget \(Self.budget) + 5%")
        let reply = try curlLoopback(port: port, "/completion", ["-d", #"{"prompt": "one two three", "n_predict": 24, "temperature": 1, "seed": 2, "ignore_eos": true}"#], maxTime: 120)
        #expect(reply.contains("\"tokens_predicted\":24"), "\(reply)")
        let afterCompletion = try #require(peakResident())
        #expect(Double(afterCompletion) <= Double(Self.budget) * 1.05, "peak RSS \(afterCompletion) after a completion exceeds the budget \(Self.budget) + 5%")
    }

    /// A fresh cgroup v1 memory group with `limit` bytes, or nil (and a note) where the machine
    /// has no writable hierarchy; the caller removes it.
    static func makeCgroup(_ name: String, limit: Int) throws -> String? {
        let root = "/sys/fs/cgroup/memory"
        let group = "\(root)/\(name)-\(getpid())"
        guard FileManager.default.isWritableFile(atPath: root),
              (try? FileManager.default.createDirectory(atPath: group, withIntermediateDirectories: false)) != nil else {
            print("skipped: \(root) is not a writable cgroup v1 memory hierarchy on this machine")
            return nil
        }
        try "\(limit)".write(toFile: "\(group)/memory.limit_in_bytes", atomically: false, encoding: .utf8)
        return group
    }

    /// The group's OOM kills so far (`memory.oom_control`) and that file's text.
    static func oomKills(_ group: String) -> (kills: Int, control: String) {
        let control = (try? String(contentsOfFile: "\(group)/memory.oom_control", encoding: .utf8)) ?? ""
        let kills = control.split(separator: "\n").first { $0.hasPrefix("oom_kill ") }.flatMap { Int($0.split(separator: " ")[1]) } ?? 0
        return (kills, control)
    }

    @Test func generationSurvivesACgroupMemoryLimit() throws {
        let limit = Int(Double(Self.budget) * 1.05)
        guard let group = try Self.makeCgroup("moe-serve-test", limit: limit) else { return }
        defer { _ = rmdir(group) }
        try Self.ensureStore()
        let result = try Self.run(Self.generateArguments, shellPrefix: "echo $$ > \(group)/cgroup.procs &&")
        let maxUsage = (try? String(contentsOfFile: "\(group)/memory.max_usage_in_bytes", encoding: .utf8)) ?? "?"
        #expect(result.status == 0, "generate under a \(limit)-byte cgroup limit exited \(result.status): \(result.stderr)")
        let oom = Self.oomKills(group)
        #expect(oom.kills == 0, "the OOM killer fired: \(oom.control)")
        print("cgroup limit \(limit) bytes: max usage \(maxUsage.trimmingCharacters(in: .whitespacesAndNewlines)) bytes (page cache included)")
    }

    /// `--memory-budget auto` inside a container: the budget comes from what the cgroup's limit
    /// leaves, not from the host's MemAvailable (20+ GiB here, which would plan every expert
    /// resident and meet the OOM killer under a limit smaller than the model).
    @Test func autoBudgetFollowsTheCgroupLimitNotTheHost() throws {
        let limit = Int(Double(Self.budget) * 1.05)   // below the 100 MB of experts plus the dense weights
        guard let group = try Self.makeCgroup("moe-serve-auto", limit: limit) else { return }
        defer { _ = rmdir(group) }
        try Self.ensureStore()
        let arguments = Self.generateArguments.map { $0 == "\(Self.budget)" ? "auto" : $0 }
        let result = try Self.run(arguments, shellPrefix: "echo $$ > \(group)/cgroup.procs &&")
        try #require(result.status == 0, "generate --memory-budget auto under a \(limit)-byte cgroup limit exited \(result.status): \(result.stderr)")
        let oom = Self.oomKills(group)
        #expect(oom.kills == 0, "the OOM killer fired: \(oom.control)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        let stats = try #require(json["stats"] as? [String: Any])
        let plan = try #require(stats["memory"] as? [String: Any])
        let planned = try #require(plan["budget_bytes"] as? Int)
        #expect(planned <= limit, "auto planned \(planned) bytes under a \(limit)-byte cgroup limit")
        let peak = try #require(stats["peak_resident_bytes"] as? Int)
        #expect(peak <= limit, "peak RSS \(peak) over the cgroup limit \(limit)")
    }

    /// `generate --oracle-trace` replays a recorded greedy run's routing as prefetches: same
    /// tokens, and the prefetches it issues are reads the replay then uses.
    @Test func theOracleReplaysAGreedyRunWithoutChangingIt() throws {
        try Self.ensureStore()
        let trace = Self.store.deletingLastPathComponent().appendingPathComponent("oracle.jsonl")
        let base = ["generate", "--model", Self.store.path, "--memory-budget", "\(Self.budget)", "--tokens", "5,17,300,42",
                    "--max-tokens", "12", "--ignore-eos", "--prefetch", "off"]
        let recorded = try Self.run(base + ["--record-trace", trace.path])
        try #require(recorded.status == 0, "generate failed: \(recorded.stderr)")
        let replayed = try Self.run(base + ["--oracle-trace", trace.path, "--oracle-depth", "2"])
        try #require(replayed.status == 0, "generate --oracle-trace failed: \(replayed.stderr)")
        func parse(_ text: String) throws -> (tokens: [Int], cache: [String: Any]) {
            let json = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
            let stats = try #require(json["stats"] as? [String: Any])
            let cache = try #require((stats["expert_cache"] as? [String: Any])?["total"] as? [String: Any])
            return (try #require(json["tokens"] as? [Int]), cache)
        }
        let (expected, _) = try parse(recorded.stdout), (tokens, cache) = try parse(replayed.stdout)
        #expect(tokens == expected)
        #expect((cache["prefetches_issued"] as? Int ?? 0) > 0)
        // Right guesses can still be evicted before use when the cache is this tight; most are not.
        let wasted = cache["wasted_prefetch_bytes"] as? Int ?? .max, read = cache["prefetch_bytes"] as? Int ?? 0
        #expect(wasted * 4 <= read, "\(wasted) of \(read) prefetched bytes wasted")
        let refused = try Self.run(base.filter { $0 != "--prefetch" && $0 != "off" } + ["--oracle-trace", trace.path])
        #expect(refused.status != 0 && refused.stderr.contains("--prefetch off"))
    }

    /// `--predictor-probes` is checked at start even when this run would not prefetch: a file
    /// that is not a probes file, or a predictor without the cross-layer gate, is refused (shape
    /// checks: `CrossLayerProbesTests`).
    @Test func predictorProbesThatCannotApplyAreRefused() throws {
        try Self.ensureStore()
        let notProbes = Self.store.appendingPathComponent("config.json").path
        let base = ["generate", "--model", Self.store.path, "--memory-budget", "\(Self.budget)", "--tokens", "5,17",
                    "--max-tokens", "2", "--prefetch", "off"]
        let unreadable = try Self.run(base + ["--predictor-probes", notProbes])
        #expect(unreadable.status != 0 && unreadable.stderr.contains(notProbes), "\(unreadable.stderr)")
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let demoProbes = root.appendingPathComponent("DemoModel/predictor-probes.safetensors").path
        let wrongPredictor = try Self.run(base + ["--predictor-probes", demoProbes, "--predictor", "history"])
        #expect(wrongPredictor.status != 0 && wrongPredictor.stderr.contains("--predictor history"), "\(wrongPredictor.stderr)")
    }

    /// A model directory's own `predictor-probes.safetensors` is used unless the command names
    /// other probes or `none`, and with probes the default predictor looks two layers ahead.
    @Test func theModelsOwnProbesAreUsedByDefault() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let demo = root.appendingPathComponent("DemoModel").path
        let base = ["generate", "--model", demo, "--expert-cache", "4MiB", "--tokens", "5,17,300,42", "--max-tokens", "6", "--ignore-eos"]
        func predictor(_ extra: [String]) throws -> (name: String?, tokens: [Int]) {
            let result = try Self.run(base + extra)
            try #require(result.status == 0, "generate \(extra) failed: \(result.stderr)")
            let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
            let prediction = (json["stats"] as? [String: Any])?["prediction"] as? [String: Any]
            return (prediction?["predictor"] as? String, try #require(json["tokens"] as? [Int]))
        }
        let own = try predictor([])
        #expect(own.name == "cross_layer_deep+probes")
        #expect(try predictor(["--predictor-probes", "none"]).name == "cross_layer")
        #expect(try predictor(["--predictor", "cross_layer"]).name == "cross_layer+probes")
        // Whatever predicts, the tokens are the model's.
        #expect(try predictor(["--prefetch", "off"]).tokens == own.tokens)
        // The shadow of the next layer (on by default; real offloading cache, real reads) guesses,
        // and changes no token: the run without it has the same tokens and no shadow runs.
        func shadowRuns(_ extra: [String]) throws -> (runs: Int, tokens: [Int]) {
            let result = try Self.run(base + extra)
            try #require(result.status == 0, "generate \(extra) failed: \(result.stderr)")
            let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
            let prediction = try #require((json["stats"] as? [String: Any])?["prediction"] as? [String: Any])
            return (try #require(prediction["shadow_runs"] as? Int, "\(prediction)"), try #require(json["tokens"] as? [Int]))
        }
        let withShadow = try shadowRuns([]), explicitlyOn = try shadowRuns(["--shadow-routing", "on"])
        let withoutShadow = try shadowRuns(["--shadow-routing", "off"])
        #expect(withShadow.runs > 0 && explicitlyOn.runs > 0)
        #expect(withoutShadow.runs == 0)
        #expect(withShadow.tokens == own.tokens && explicitlyOn.tokens == own.tokens && withoutShadow.tokens == own.tokens)
        let bad = try Self.run(base + ["--shadow-routing", "sometimes"])
        #expect(bad.status != 0 && bad.stderr.contains("--shadow-routing"), "\(bad.stderr)")
        // `--prefetch auto`: the same tokens, and the stats say what its duel decided (five
        // decode steps: inside the first block, which prefetches).
        let auto = try Self.run(base + ["--prefetch", "auto"])
        try #require(auto.status == 0, "\(auto.stderr)")
        let autoJSON = try #require(try JSONSerialization.jsonObject(with: Data(auto.stdout.utf8)) as? [String: Any])
        #expect(autoJSON["tokens"] as? [Int] == own.tokens)
        let duel = try #require((autoJSON["stats"] as? [String: Any])?["prefetch_auto"] as? [String: Any], "\(auto.stdout)")
        #expect(duel["leader"] as? String == "on" && duel["steps_on"] as? Int == 5 && duel["steps_off"] as? Int == 0, "\(duel)")
        let badPrefetch = try Self.run(base + ["--prefetch", "sometimes"])
        #expect(badPrefetch.status != 0 && badPrefetch.stderr.contains("--prefetch") && badPrefetch.stderr.contains("auto"), "\(badPrefetch.stderr)")
        let missing = try Self.run(base + ["--predictor-probes", "/nonexistent/probes.safetensors"])
        #expect(missing.status != 0 && missing.stderr.contains("/nonexistent/probes.safetensors"))
    }

    /// `bench predictor` on the trained demo model: every named configuration, and with the
    /// model's probes the cross-layer gates with them too; recall and precision far above
    /// chance (a random top-4 of 32 is right 12.5% of the time).
    @Test func benchPredictorReportsEveryConfigurationOnTheDemoModel() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let prompts = FileManager.default.temporaryDirectory.appendingPathComponent("predictor-prompts-\(UUID().uuidString).jsonl")
        try "\"def parse_args(argv):\\n\"\n\"import os\\nimport sys\\n\\nclass Config:\"\n".write(to: prompts, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: prompts) }
        let result = try Self.run(["bench", "predictor", "--model", root.appendingPathComponent("DemoModel").path,
                                   "--prompts", prompts.path, "--max-tokens", "16"])
        try #require(result.status == 0, "bench predictor failed: \(result.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        let configs = try #require(json["configs"] as? [String: [String: Any]])
        for name in ["cross_layer", "cross_layer_wide", "cross_layer_deep", "cross_layer_deep3", "pre_attention", "history", "combined",
                     "cross_layer+probes", "cross_layer_deep+probes"] {
            let config = try #require(configs[name], "\(name) missing from \(configs.keys.sorted())")
            let recall = try #require(config["recall"] as? Double), precision = try #require(config["precision"] as? Double)
            #expect((config["per_layer"] as? [Any])?.count == 8)
            #expect(config["wasted_bytes_per_token"] is Double)
            if name.hasPrefix("cross_layer") { #expect(recall > 0.3 && precision > 0.4, "\(name): recall \(recall), precision \(precision)") }
        }
        #expect(result.stderr.contains("| predictor | recall | precision |"))
    }

    /// `bench batch --record-trace DIR` writes each run's routing step by step, and `bench trace
    /// --as-recorded` replays it through the shared-pool policies (and refuses `--sequences`).
    @Test func benchBatchRecordsATraceThatReplaysAsRecorded() throws {
        try Self.ensureStore()
        let directory = Self.store.deletingLastPathComponent().appendingPathComponent("batch-traces")
        try? FileManager.default.removeItem(at: directory)
        let batch = try Self.run(["bench", "batch", "--model", Self.store.path, "--memory-budget", "\(Self.budget)",
                                  "--sequences", "2", "--gen-tokens", "4", "--prompt-tokens", "4", "--runs", "1",
                                  "--prefetch", "off", "--record-trace", directory.path])
        try #require(batch.status == 0, "bench batch failed: \(batch.stderr)")
        let trace = directory.appendingPathComponent("batch-2seq-prefetch-off-run1.jsonl")
        let lines = try String(contentsOf: trace, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 2 * (4 + 4 - 1))
        #expect(lines.allSatisfy { $0.contains("\"step\":") })
        let replay = try Self.run(["bench", "trace", trace.path, "--cache-per-layer", "64", "--as-recorded"])
        try #require(replay.status == 0, "bench trace --as-recorded failed: \(replay.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(replay.stdout.utf8)) as? [String: Any])
        #expect((json["steps"] as? Int ?? 0) >= 4)
        let policies = try #require(json["policies"] as? [String: Any])
        #expect(policies["sequence_global"] != nil && policies["belady_global"] != nil)
        #expect(replay.stderr.contains("decode window"))
        let refused = try Self.run(["bench", "trace", trace.path, "--cache-per-layer", "64", "--as-recorded", "--sequences", "8"])
        #expect(refused.status != 0 && refused.stderr.contains("--as-recorded"))
    }

    /// `bench decode` on the synthetic store: the JSON contract (medians, hit rate, recall, bytes
    /// per token, stall fraction, bound), the load-on-demand baseline in the same run, and the
    /// budget plot.
    @Test func benchDecodeReportsTheContractAndABaseline() throws {
        try Self.ensureStore()
        let plot = Self.store.deletingLastPathComponent().appendingPathComponent("plot.svg")
        let result = try Self.run(["bench", "decode", "--model", Self.store.path, "--memory-budget", "\(Self.budget)",
                                   "--prompt-tokens", "8", "--gen-tokens", "4", "--runs", "1", "--baseline",
                                   "--plot", plot.path, "--plot-budgets", "100MiB,140MiB"])
        try #require(result.status == 0, "bench decode failed: \(result.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        for key in ["prefill_tokens_per_second", "decode_tokens_per_second", "hit_rate", "bytes_read_per_token",
                    "stall_fraction", "bound_decode_tokens_per_second"] {
            let value = try #require(json[key] as? Double, "missing \(key)")
            #expect(value >= 0, "\(key) = \(value)")
        }
        #expect((json["decode_tokens_per_second"] as? Double ?? 0) > 0)
        // The bound divides by the faster of the probe and what the disk delivered during the runs.
        let probe = try #require(json["disk_gbps"] as? Double)
        let boundDisk = try #require(json["bound_disk_gb_per_second"] as? Double)
        #expect(boundDisk >= probe)
        if let busy = json["busy_gb_per_second"] as? Double {
            #expect(boundDisk >= busy)
            // End to end the disk gave the bytes over the whole decode, at most its rate while busy.
            let delivered = try #require(json["delivered_gb_per_second"] as? Double)
            #expect(delivered > 0 && delivered <= busy * 1.0001)
        }
        #expect(json["recall"] as? Double != nil, "prefetch is on by default, so recall is reported")
        // The per-run records of the main configuration, and how many runs there were (a count
        // under "runs" used to overwrite the array).
        #expect((json["runs"] as? [[String: Any]])?.count == 1)
        #expect(json["run_count"] as? Int == 1)
        // The default policy duels its two recency bonuses; each run says which one led at its end.
        let leader = (json["runs"] as? [[String: Any]])?.first?["policy_leader"] as? String
        #expect(leader == "fixed_recency" || leader == "measured_recency", "\(leader ?? "none")")
        let baselines = try #require(json["baselines"] as? [[String: Any]])
        #expect(baselines.first?["name"] as? String == "load-on-demand")
        #expect(baselines.first?["prefetch"] as? String == "off")
        #expect(result.stderr.contains("| moe-serve @"))
        let svg = try String(contentsOf: plot, encoding: .utf8)
        #expect(svg.hasPrefix("<svg") && svg.contains("polyline"))
    }

    /// `bench decode --perfect-predictor 2 --perfect-beside-real`: rows of the same runs'
    /// generation with a perfect predictor, alone and beside the real one. It records the
    /// routing once with prefetch off, then replays it two MoE layers ahead: the replay's tokens
    /// match the recording (or it fails), and its decode steps read ahead of use.
    @Test func benchDecodeMeasuresAPerfectPredictorBesideTheRealOne() throws {
        try Self.ensureStore()
        let result = try Self.run(["bench", "decode", "--model", Self.store.path, "--memory-budget", "\(Self.budget)",
                                   "--prompt-tokens", "8", "--gen-tokens", "6", "--runs", "1", "--perfect-predictor", "2",
                                   "--perfect-beside-real"])
        try #require(result.status == 0, "bench decode failed: \(result.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(json["predictor"] as? String != "perfect")
        let baselines = try #require(json["baselines"] as? [[String: Any]])
        try #require(baselines.count == 2)
        let perfect = baselines[0]
        let beside = baselines[1]
        #expect(beside["name"] as? String == "real+perfect-2")
        #expect(beside["prefetch"] as? String == json["prefetch"] as? String)
        #expect((beside["predictor"] as? String)?.hasSuffix("+perfect") == true, "\(beside["predictor"] ?? "none")")
        #expect(((beside["runs"] as? [[String: Any]])?.first?["decode_prefetch_bytes"] as? Int ?? 0) > 0)
        #expect(perfect["name"] as? String == "perfect-2")
        #expect(perfect["prefetch"] as? String == "off")
        #expect(perfect["predictor"] as? String == "perfect")
        let runs = try #require(perfect["runs"] as? [[String: Any]])
        #expect(runs.count == 1)
        #expect((runs.first?["decode_prefetch_bytes"] as? Int ?? 0) > 0, "the oracle read nothing ahead: \(runs)")
        #expect((perfect["bound_decode_tokens_per_second"] as? Double ?? 0) > 0)
        #expect(result.stderr.contains("recording run 1/1") && result.stderr.contains("| perfect-2 @"))
        let refused = try Self.run(["bench", "decode", "--model", Self.store.path, "--perfect-predictor", "0"])
        #expect(refused.status != 0 && refused.stderr.contains("--perfect-predictor"))
        let alone = try Self.run(["bench", "decode", "--model", Self.store.path, "--perfect-beside-real"])
        #expect(alone.status != 0 && alone.stderr.contains("--perfect-predictor"))
        let mode = try Self.run(["bench", "decode", "--model", Self.store.path, "--surrogate-shadow", "sometimes"])
        #expect(mode.status != 0 && mode.stderr.contains("--surrogate-shadow") && mode.stderr.contains("fill"), "\(mode.stderr)")
        let missing = try Self.run(["bench", "decode", "--model", Self.store.path, "--expert-surrogates", "/nonexistent.safetensors"])
        #expect(missing.status != 0 && missing.stderr.contains("--expert-surrogates"), "\(missing.stderr)")
    }
}
