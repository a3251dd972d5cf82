import Foundation
import Testing

/// Each part of Deploy/ through the validator its ecosystem uses, plus the checks no validator
/// makes (the memory limit follows the budget, retries never re-send a received request, ...).
@Suite(.serialized) struct DeployAssetTests {
    static func read(_ path: String) throws -> String {
        try String(contentsOf: DeployPaths.root.appendingPathComponent(path), encoding: .utf8)
    }

    /// The validators' virtual environment (kubernetes-validate, hadolint), made on first use.
    static func deployVenv() throws -> String {
        let (status, output) = try DeployPaths.run("/bin/bash", ["scripts/deploy-venv.sh"])
        #expect(status == 0, "scripts/deploy-venv.sh failed: \(output)")
        return output.split(separator: "\n").last.map(String.init) ?? ""
    }

    /// `memory_budget = "24GiB"` in a ServerConfig file, in MiB.
    static func budgetMiB(_ toml: String) -> Int? {
        guard let m = toml.firstMatch(of: /(?m)^memory_budget\s*=\s*"(\d+)(MiB|GiB)"/) else { return nil }
        return Int(m.1)! * (m.2 == "GiB" ? 1024 : 1)
    }

    @Test(.enabled(if: DeployPaths.which("systemd-analyze") != nil, "systemd-analyze is not installed (apt-get install systemd)"))
    func systemdUnitVerifiesAndIsHardened() throws {
        let unit = try Self.read("Deploy/systemd/moe-serve.service")
        for line in ["Type=notify", "DynamicUser=yes", "ProtectSystem=strict", "ReadOnlyPaths=/srv/moe-serve/model",
                     "LimitNOFILE=65536", "LimitMEMLOCK=infinity", "NoNewPrivileges=yes", "KillSignal=SIGTERM", "CapabilityBoundingSet="] {
            #expect(unit.contains("\n\(line)\n"), "the unit lacks \(line)")
        }
        // ExecStart reads a ServerConfig/ file installed as /etc/moe-serve/moe-serve.toml.
        #expect(unit.contains("ServerConfig/behind-load-balancer.toml /etc/moe-serve/moe-serve.toml"))
        #expect(unit.contains("ExecStart=/usr/local/bin/moe-serve serve --config /etc/moe-serve/moe-serve.toml"))
        // MemoryMax = that file's memory_budget + the documented 512 MiB margin.
        let budget = try #require(Self.budgetMiB(try Self.read("ServerConfig/behind-load-balancer.toml")))
        let memoryMax = try #require(unit.firstMatch(of: /\nMemoryMax=(\d+)M\n/).map { Int($0.1)! })
        #expect(memoryMax == budget + 512)
        let grace = try #require(try Self.read("ServerConfig/behind-load-balancer.toml")
            .firstMatch(of: /(?m)^shutdown_grace_period\s*=\s*(\d+)/).map { Int($0.1)! })
        let stopTimeout = try #require(unit.firstMatch(of: /\nTimeoutStopSec=(\d+)\n/).map { Int($0.1)! })
        #expect(stopTimeout > grace, "systemd would SIGKILL before the drain ends")

        // verify needs ExecStart's binary to exist: point it at the one just built.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("moe-unit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let copy = dir.appendingPathComponent("moe-serve.service")
        try unit.replacingOccurrences(of: "/usr/local/bin/moe-serve", with: DeployPaths.binary.path)
            .write(to: copy, atomically: true, encoding: .utf8)
        let analyze = DeployPaths.which("systemd-analyze")!
        let verify = try DeployPaths.run(analyze, ["verify", copy.path])
        #expect(verify.status == 0 && verify.output.isEmpty, "systemd-analyze verify: \(verify.output)")
        // systemd's own exposure score (0 = locked down, 10 = unprotected); "OK" is below 4.
        let security = try DeployPaths.run(analyze, ["security", "--offline=true", copy.path])
        let exposure = try #require(security.output.firstMatch(of: /Overall exposure level for [^:]+: (\d+\.\d+)/).map { Double($0.1)! },
                                    "no exposure level in: \(security.output.suffix(500))")
        #expect(exposure <= 2.0, "exposure \(exposure)")
    }

    @Test func containerfileLintsAndHasTheRuntimeItNeeds() throws {
        let file = "Deploy/container/Containerfile"
        let text = try Self.read(file)
        let venv = try Self.deployVenv()
        let lint = try DeployPaths.run("\(venv)/bin/hadolint", [file])
        #expect(lint.status == 0, "hadolint: \(lint.output)")

        // What hadolint does not check: the shape this project needs.
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        let froms = lines.filter { $0.hasPrefix("FROM ") }
        #expect(froms.count == 2, "a build stage and a runtime stage")
        #expect(froms.first?.contains("AS build") == true)
        #expect(text.contains("ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim"))
        let runtime = text.components(separatedBy: "AS runtime").last ?? ""
        for package in ["libuv1", "libopenblas0", "liblz4-1", "libhttp-parser2.9"] {
            #expect(runtime.contains(" \(package) "), "runtime stage lacks \(package)")
            // The names are real Debian packages (bookworm), not guesses.
            if DeployPaths.which("apt-cache") != nil {
                let show = try DeployPaths.run(DeployPaths.which("apt-cache")!, ["show", "--no-all-versions", package])
                #expect(show.output.contains("Package: \(package)"), "apt-cache knows no \(package)")
            }
        }
        let user = try #require(lines.last { $0.hasPrefix("USER ") })
        #expect(!user.contains("root") && !user.hasPrefix("USER 0"), "runs as \(user)")
        #expect(text.contains("HEALTHCHECK") && text.contains("http://127.0.0.1:8080/health"))
        #expect(text.contains("VOLUME [\"/models\"]") && text.contains("\"--model\", \"/models\""))
        // Everything COPY takes from the build context exists in the repository.
        for line in lines where line.hasPrefix("COPY ") && !line.contains("--from=") {
            let parts = line.split(separator: " ").dropFirst().dropLast()
            for source in parts {
                #expect(FileManager.default.fileExists(atPath: DeployPaths.root.appendingPathComponent(String(source)).path),
                        "COPY source \(source) is missing")
            }
        }
    }

    @Test func kubernetesOverlaysValidateAgainstTheSchemas() throws {
        let venv = try Self.deployVenv()
        let result = try DeployPaths.run("\(venv)/bin/python", ["scripts/validate_kubernetes.py"])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("all Kubernetes checks passed"))
    }

    @Test func nginxConfigIsSSESafeAndNeverResendsAReceivedRequest() throws {
        let conf = try Self.read("Deploy/nginx/moe-serve.conf")
        let directives = conf.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.hasPrefix("#") }
        for line in ["least_conn;", "hash $http_x_session_id consistent;", "proxy_buffering off;", "proxy_http_version 1.1;",
                     "proxy_set_header Connection \"\";", "proxy_read_timeout 600s;", "proxy_next_upstream error timeout;"] {
            #expect(directives.contains(line), "missing: \(line)")
        }
        let retries = directives.filter { $0.hasPrefix("proxy_next_upstream ") }
        #expect(retries == ["proxy_next_upstream error timeout;"], "retry conditions: \(retries)")
        #expect(!directives.contains { $0.contains("non_idempotent") || $0.contains("http_50") })
        #expect(directives.filter { $0.hasPrefix("server 10.") }.allSatisfy { $0.contains("max_fails=") && $0.contains("fail_timeout=") })
        #expect(directives.filter { $0.hasPrefix("keepalive ") }.count == 2)
    }

    @Test(.enabled(if: DeployPaths.which("nginx") != nil, "nginx is not installed (scripts/install-deps.sh installs it)"))
    func nginxAcceptsTheConfig() throws {
        let result = try DeployPaths.run(Self.python, ["scripts/nginx_failover_test.py", "--binary", DeployPaths.binary.path, "--check-config"])
        #expect(result.status == 0 && result.output.contains("test is successful"), "\(result.output)")
    }

    /// The CI failover test: 3 replicas behind nginx, 60 s of mixed load, one SIGKILLed and
    /// restarted (scripts/nginx_failover_test.py says what it checks). About 90 s.
    @Test func threeReplicasBehindNginxSurviveASigkill() throws {
        #expect(DeployPaths.which("nginx") != nil, "nginx is not installed: run scripts/install-deps.sh")
        guard DeployPaths.which("nginx") != nil else { return }
        let seconds = ProcessInfo.processInfo.environment["MOE_FAILOVER_SECONDS"] ?? "60"
        let result = try DeployPaths.run(Self.python, ["scripts/nginx_failover_test.py", "--binary", DeployPaths.binary.path,
                                                        "--seconds", seconds])
        print(result.output)
        #expect(result.status == 0, "\(result.output)")
    }

    /// The interpreter for the harness scripts (standard library; prometheus_client when present).
    static var python: String {
        ProcessInfo.processInfo.environment["MOE_PYTHON"] ?? DeployPaths.which("python3") ?? "/usr/bin/python3"
    }
}
