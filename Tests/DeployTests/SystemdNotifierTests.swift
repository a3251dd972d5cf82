import Foundation
import Glibc
import ServiceNotify
import Testing

/// A real unix datagram socket standing in for systemd's notification socket.
final class NotifySocket {
    let fd: Int32
    /// The address as systemd would put it in `$NOTIFY_SOCKET` (`@name` when abstract).
    let address: String
    private let path: String?

    /// Binds a socket at a fresh file path, or at a fresh abstract name when `abstract`.
    init(abstract: Bool) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw SocketSetupError(message: "socket() failed") }
        let name = "moe-notify-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        var bytes: [UInt8]
        if abstract {
            address = "@" + name
            path = nil
            bytes = [0] + Array(name.utf8)
        } else {
            let file = NSTemporaryDirectory() + name + ".sock"
            address = file
            path = file
            bytes = Array(file.utf8) + [0]
        }
        var sa = sockaddr_un()
        sa.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &sa.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + bytes.count)
        let r = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard r == 0 else { close(fd); throw SocketSetupError(message: "bind() failed: \(String(cString: strerror(errno)))") }
        // Never block a test forever: a missing datagram fails after the timeout instead.
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Waits up to `seconds` for one datagram; nil on timeout.
    func receive(within seconds: Double) -> String? {
        let deadline = Date().addingTimeInterval(seconds)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while Date() < deadline {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 { return String(decoding: buffer[0..<n], as: UTF8.self) }
        }
        return nil
    }

    deinit {
        close(fd)
        if let path { unlink(path) }
    }
}

@Suite struct SystemdNotifierTests {
    @Test func sendsOneDatagramToAFileSocket() throws {
        let socket = try NotifySocket(abstract: false)
        let notifier = try #require(SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.address]))
        try notifier.notify("READY=1\nSTATUS=model loaded")
        #expect(socket.receive(within: 2) == "READY=1\nSTATUS=model loaded")
    }

    @Test func sendsToAnAbstractSocketNamedWithAnAt() throws {
        let socket = try NotifySocket(abstract: true)
        let notifier = SystemdNotifier(socketPath: socket.address)
        try notifier.notify("STOPPING=1")
        #expect(socket.receive(within: 2) == "STOPPING=1")
    }

    @Test func noSocketMeansNoNotifierAndABadOneAnError() {
        #expect(SystemdNotifier(environment: [:]) == nil)
        #expect(SystemdNotifier(environment: ["NOTIFY_SOCKET": ""]) == nil)
        #expect(throws: NotifyError.self) { try SystemdNotifier(socketPath: "/nonexistent-dir/notify.sock").notify("READY=1") }
        #expect(throws: NotifyError.self) { try SystemdNotifier(socketPath: "/" + String(repeating: "x", count: 200)).notify("READY=1") }
    }

    /// The built server under a fake systemd: READY=1 only once the model is loaded (so /health
    /// is 200 by then), STOPPING=1 when SIGTERM starts the drain, and a clean exit.
    @Test func serveSignalsReadyAfterLoadingAndStoppingOnSigterm() throws {
        let socket = try NotifySocket(abstract: true)
        let process = Process()
        process.executableURL = DeployPaths.binary
        process.arguments = ["serve", "--port", "0", "--memory-budget", "80MiB"]
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = socket.address
        process.environment = environment
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        let ready = socket.receive(within: 120)
        #expect(ready?.hasPrefix("READY=1") == true)
        // Ready means ready: the health check must already pass.
        let log = String(decoding: stderr.fileHandleForReading.availableData, as: UTF8.self)
        let port = try #require(log.firstMatch(of: /127\.0\.0\.1:(\d+)/).map { Int($0.1)! })
        #expect(try DeployPaths.httpStatus("http://127.0.0.1:\(port)/health") == 200)
        kill(process.processIdentifier, SIGTERM)
        let stopping = socket.receive(within: 30)
        #expect(stopping?.hasPrefix("STOPPING=1") == true)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
    }
}

extension SystemdNotifierTests {
    /// A model that cannot load must not look like a clean stop: no READY=1, and a non-zero
    /// exit so systemd's Restart=on-failure (and any supervisor) sees it.
    @Test func serveExitsNonZeroWithoutReadyWhenTheModelCannotLoad() throws {
        let socket = try NotifySocket(abstract: true)
        let process = Process()
        process.executableURL = DeployPaths.binary
        process.arguments = ["serve", "--port", "0", "--memory-budget", "8MiB"]
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = socket.address
        process.environment = environment
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus != 0)
        #expect(socket.receive(within: 0.5)?.contains("READY=1") != true)
    }
}

/// The test socket could not be set up.
struct SocketSetupError: Error {
    let message: String
}
