import Foundation

/// A read-only file read with `pread` that bypasses the page cache: opened with `O_DIRECT`
/// where the filesystem allows it, otherwise read buffered and the pages dropped afterwards
/// with `posix_fadvise(POSIX_FADV_DONTNEED)`, so that reads of experts measure and use the disk
/// and the page cache never silently holds the model.
///
/// With `O_DIRECT`, offsets, lengths and buffer addresses must be multiples of
/// `DirectFileReader.granule`. `pread` on one descriptor is safe from several threads.
public final class DirectFileReader: @unchecked Sendable {
    /// Alignment O_DIRECT needs for offsets, lengths and buffers.
    public static let granule = 4096

    /// Path of the file.
    public let path: String
    /// Whether reads bypass the page cache through O_DIRECT (false: buffered + DONTNEED).
    public let usesDirectIO: Bool
    /// Size of the file in bytes at open time.
    public let size: Int
    private let fd: Int32
    /// The open descriptor (for the io_uring reader, which reads the same file).
    public var descriptor: Int32 { fd }

    // O_DIRECT is behind _GNU_SOURCE in glibc's headers, so Swift does not import it.
    #if arch(x86_64)
    private static let oDirect: Int32 = 0o40000
    #elseif arch(arm64)
    private static let oDirect: Int32 = 0o200000
    #else
    private static let oDirect: Int32 = 0
    #endif

    /// Opens `path`. `direct: false` asks for buffered reads; `keepPageCache: true` (with
    /// `direct: false`) leaves the pages cached, for the page-cache benchmark.
    public init(path: String, direct: Bool = true, keepPageCache: Bool = false) throws {
        self.path = path
        keepsPageCache = keepPageCache
        var descriptor: Int32 = -1
        var directIO = false
        if direct && Self.oDirect != 0 {
            descriptor = open(path, O_RDONLY | Self.oDirect)
            if descriptor >= 0 { directIO = true } else if errno != EINVAL {
                throw ModelFormatError.file(path, "cannot open: \(String(cString: strerror(errno)))")
            }
        }
        if descriptor < 0 {
            descriptor = open(path, O_RDONLY)
            guard descriptor >= 0 else { throw ModelFormatError.file(path, "cannot open: \(String(cString: strerror(errno)))") }
        }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            close(descriptor)
            throw ModelFormatError.file(path, "cannot stat")
        }
        fd = descriptor
        usesDirectIO = directIO
        size = Int(status.st_size)
    }

    deinit { close(fd) }

    /// Reads `length` bytes at `offset` into `buffer`, retrying short reads; returns the bytes
    /// read, fewer than `length` only at end of file. With O_DIRECT all three must be aligned.
    public func read(into buffer: UnsafeMutableRawPointer, offset: Int, length: Int) throws -> Int {
        var done = 0
        while done < length {
            let n = pread(fd, buffer + done, length - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw ModelFormatError.file(path, "read of \(length) bytes at offset \(offset) failed: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            done += n
        }
        if !usesDirectIO && !keepsPageCache {
            _ = posix_fadvise(fd, off_t(offset), off_t(length), Int32(POSIX_FADV_DONTNEED))
        }
        return done
    }

    /// Buffered reads leave their pages cached (page-cache benchmark only).
    public let keepsPageCache: Bool

    /// Drops the file's pages from the page cache (best effort).
    public func dropPageCache() {
        _ = posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_DONTNEED))
    }
}
