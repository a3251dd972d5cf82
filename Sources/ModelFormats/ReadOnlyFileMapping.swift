import Foundation

/// A whole file mapped read-only (`MAP_PRIVATE`, `PROT_READ`), unmapped on deinit: the one
/// open/stat/mmap that `GGUFFile` and `SafetensorsFile` share. The descriptor is closed as
/// soon as the mapping exists (the mapping keeps the file alive).
public final class ReadOnlyFileMapping: @unchecked Sendable {
    /// The first byte of the file.
    public let base: UnsafeRawPointer
    /// The file's size in bytes (the mapped length).
    public let count: Int

    /// Maps the file at `path`; throws a one-line error naming the file when it cannot be
    /// opened or mapped, or is shorter than `minimumSize` bytes (`format` names what it was
    /// meant to hold, for that error).
    public init(path: String, minimumSize: Int, format: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw ModelFormatError.file(path, "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw ModelFormatError.file(path, "cannot stat") }
        let size = Int(status.st_size)
        guard size >= minimumSize else { throw ModelFormatError.file(path, "truncated: \(size) bytes, too short for a \(format) header") }
        guard let mapping = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), mapping != MAP_FAILED else {
            throw ModelFormatError.file(path, "cannot map: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(mapping)
        count = size
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), count) }

    /// The whole file.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    /// Drops the mapped pages of `[offset, offset + length)` from this process's resident set
    /// once their bytes were copied out (pages shared with a neighbour at either end are kept;
    /// the kernel's page cache may keep them, reclaimable, but they are no longer counted here).
    public func dropResidentPages(offset: Int, length: Int) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (offset + page - 1) / page * page
        let end = (offset + length) / page * page
        guard end > start else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, Int32(MADV_DONTNEED))
    }
}
