import Foundation

/// Something that reads byte ranges of one file into caller memory, blocking until done; safe
/// from several threads. The thread-pool reader (`DirectFileReader`, one `pread` per calling
/// thread) and the io_uring reader (`UringFileReader`, many reads in flight per call) are two.
public protocol BlockReader: AnyObject, Sendable {
    /// Reads `length` bytes at `offset` into `buffer`; returns the bytes read, fewer than
    /// `length` only at end of file. With O_DIRECT all three must be 4 KiB-aligned.
    func read(into buffer: UnsafeMutableRawPointer, offset: Int, length: Int) throws -> Int
    /// As `read`, but may call `firstPartArrived` once the first `firstPart` bytes are in
    /// `buffer` in full, while the rest is still arriving (a split read: an expert's gate and up
    /// matrices can be computed with while its down matrix is read). Never called when those
    /// bytes failed or came back short, or when the engine read the range whole (a `firstPart`
    /// outside `1..<length` is always a plain read).
    func read(into buffer: UnsafeMutableRawPointer, offset: Int, length: Int, firstPart: Int,
              firstPartArrived: () -> Void) throws -> Int
    /// The engine's name in logs and benchmarks (`threads` or `io_uring`).
    var engineName: String { get }
    /// Asks the engine to register the mapping `[start, start + bytes)` for reads into it
    /// (io_uring's fixed buffers); false where it is not registered. The caller must call
    /// `unregisterTarget(start)` before unmapping it.
    func registerTarget(_ start: UnsafeMutableRawPointer, bytes: Int) -> Bool
    /// Undoes `registerTarget` (nothing for an address that is not registered).
    func unregisterTarget(_ start: UnsafeMutableRawPointer)
}

extension BlockReader {
    /// A plain read: `firstPartArrived` is never called. An engine that cannot keep the rest in
    /// flight while the first part is handed over would have to read the two one after the other,
    /// and the thread-pool reader measured 0.93x that way (4 paired rounds, OLMoE, session 22).
    public func read(into buffer: UnsafeMutableRawPointer, offset: Int, length: Int, firstPart: Int,
                     firstPartArrived: () -> Void) throws -> Int {
        try read(into: buffer, offset: offset, length: length)
    }

    /// Nothing to register: every read is a plain one.
    public func registerTarget(_ start: UnsafeMutableRawPointer, bytes: Int) -> Bool { false }
    public func unregisterTarget(_ start: UnsafeMutableRawPointer) {}
}

extension DirectFileReader: BlockReader {
    /// `threads`: each calling thread does its own `pread`.
    public var engineName: String { IOEngineChoice.threads.rawValue }
}

/// Which engine reads experts: `MOE_IO_ENGINE`, `--io-engine`, TOML `io_engine`.
public enum IOEngineChoice: String, Sendable, Equatable, CaseIterable {
    /// io_uring when the kernel allows it, else the thread-pool reader (one log line says so).
    case auto
    /// io_uring or an error (no silent fallback).
    case uring = "io_uring"
    /// The thread-pool reader (`pread`, one read per reader thread).
    case threads

    /// `MOE_IO_ENGINE` if set and valid, else `auto`. An invalid value ends the process with a
    /// one-line error rather than silently picking an engine the user did not ask for.
    public static let environmentDefault: IOEngineChoice = {
        guard let value = ProcessInfo.processInfo.environment["MOE_IO_ENGINE"], !value.isEmpty else { return .auto }
        do { return try parse(value) } catch {
            FileHandle.standardError.write(Data("moe-serve: error: MOE_IO_ENGINE: \(error)\n".utf8))
            exit(2)
        }
    }()

    /// The choice named `name` (`auto`, `io_uring`/`uring`, `threads`).
    public static func parse(_ name: String) throws -> IOEngineChoice {
        if name == "uring" { return .uring }
        guard let choice = IOEngineChoice(rawValue: name) else {
            throw ModelFormatError("expected auto, io_uring or threads, got '\(name)'")
        }
        return choice
    }
}

/// Picks the reader for a file according to an `IOEngineChoice`.
public enum IOEngine {
    /// Ring entries (the most reads in flight on one file); issue 26 asks for 32 or more.
    public static let defaultRingEntries = 64
    /// Bytes of each piece a large read is split into, so that one expert read keeps several
    /// reads in flight on the io_uring path (the disk gives more bandwidth with depth).
    /// `MOE_IO_PIECE_KIB` (a multiple of 4) overrides it, for comparison.
    public static let defaultPieceBytes: Int = {
        if let text = ProcessInfo.processInfo.environment["MOE_IO_PIECE_KIB"], let kib = Int(text), kib >= 4, kib % 4 == 0 { return kib << 10 }
        return 1 << 20
    }()

    private static let logLock = NSLock()
    nonisolated(unsafe) private static var loggedFallback = false

    /// The reader for `file`: an io_uring reader over its descriptor, or `file` itself.
    /// `.auto` falls back to `file` when io_uring cannot be set up (old kernel, seccomp in a
    /// container), logging one line per process; `.uring` throws instead.
    public static func reader(for file: DirectFileReader, choice: IOEngineChoice,
                              ringEntries: Int = defaultRingEntries, pieceBytes: Int = defaultPieceBytes) throws -> any BlockReader {
        switch choice {
        case .threads:
            return file
        case .uring:
            return try UringFileReader(file: file, entries: ringEntries, pieceBytes: pieceBytes)
        case .auto:
            do {
                return try UringFileReader(file: file, entries: ringEntries, pieceBytes: pieceBytes)
            } catch {
                logLock.lock()
                let first = !loggedFallback
                loggedFallback = true
                logLock.unlock()
                if first {
                    FileHandle.standardError.write(Data("moe-serve: \(error); expert reads use the thread-pool reader\n".utf8))
                }
                return file
            }
        }
    }
}
