#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a notification could not be sent.
public struct NotifyError: Error, CustomStringConvertible {
    /// One line naming what failed.
    public let description: String
}

/// The service manager's readiness protocol (`sd_notify(3)`) without libsystemd: systemd
/// (with `Type=notify`) passes the path of a unix datagram socket in `$NOTIFY_SOCKET`; the
/// service sends newline-separated `KEY=VALUE` lines there, e.g. `READY=1` once it can serve
/// and `STOPPING=1` when it begins to drain. A path starting with `@` names a socket in the
/// abstract namespace (the `@` stands for a leading NUL byte). Outside systemd the variable is
/// unset and there is no notifier, so callers do nothing.
public struct SystemdNotifier: Sendable {
    /// The socket address as given in `$NOTIFY_SOCKET`.
    public let socketPath: String

    /// A notifier for `socketPath` (an absolute path, or `@name` for the abstract namespace).
    public init(socketPath: String) {
        self.socketPath = socketPath
    }

    /// The notifier named by `$NOTIFY_SOCKET` in `environment`, or nil when the variable is unset
    /// or empty (not started by systemd with `Type=notify`).
    public init?(environment: [String: String]) {
        guard let path = environment["NOTIFY_SOCKET"], !path.isEmpty else { return nil }
        self.init(socketPath: path)
    }

    /// Sends `state` (for example `"READY=1\nSTATUS=model loaded"`) as one datagram.
    public func notify(_ state: String) throws {
        let bytes = Array(state.utf8)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var pathBytes = Array(socketPath.utf8)
        let abstract = pathBytes.first == UInt8(ascii: "@")
        if abstract { pathBytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        // A filesystem path needs room for its terminating NUL; an abstract name has none.
        guard pathBytes.count + (abstract ? 0 : 1) <= capacity, pathBytes.count > (abstract ? 1 : 0) else {
            throw NotifyError(description: "NOTIFY_SOCKET '\(socketPath)' is not a usable unix socket address")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in pathBytes.enumerated() { raw[i] = b }
        }
        // Abstract addresses are exactly as long as their name: trailing NULs would be part of it.
        let pathOffset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
        let length = socklen_t(pathOffset + pathBytes.count + (abstract ? 0 : 1))

        #if canImport(Glibc)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let fd = socket(AF_UNIX, SOCK_DGRAM, 0)
        #endif
        guard fd >= 0 else { throw NotifyError(description: "cannot create a unix datagram socket: \(Self.lastError())") }
        defer { close(fd) }
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, bytes.count, 0, sa, length) }
            }
        }
        guard sent == bytes.count else {
            throw NotifyError(description: "cannot notify systemd at '\(socketPath)': \(Self.lastError())")
        }
    }

    private static func lastError() -> String { String(cString: strerror(errno)) }
}
