import Foundation

/// A fixed-size, 64-byte-aligned, zero-initialised buffer of `Element`s.
///
/// 64 bytes is one cache line and one AVX-512 register, so SIMD loads never straddle lines and
/// O_DIRECT reads (which need 4 KiB alignment) use `AlignedBuffer(count:alignment:)` with 4096.
/// The buffer owns its memory; views into it must not outlive it.
public final class AlignedBuffer<Element>: @unchecked Sendable {
    /// Number of elements.
    public let count: Int
    /// Alignment of `pointer`, in bytes.
    public let alignment: Int
    /// Start of the storage.
    public let pointer: UnsafeMutablePointer<Element>

    /// Allocates `count` elements aligned to `alignment` bytes (a power of two ≥ 16), zeroed
    /// unless `zeroed` is false (for buffers a read or a decoder overwrites at once: zeroing
    /// would be one more pass over memory).
    public init(count: Int, alignment: Int = 64, zeroed: Bool = true) {
        precondition(count >= 0 && alignment >= 16 && alignment & (alignment - 1) == 0)
        self.count = count
        self.alignment = alignment
        let bytes = max(1, count * MemoryLayout<Element>.stride)
        // Buffers of 64 KiB and more (experts, KV caches, dense matrices) are mapped straight from the
        // kernel and unmapped on release. Through malloc, glibc raises its mmap threshold
        // after the first large free and then serves multi-megabyte blocks from heap arenas it
        // never returns, so an expert cache evicting 12 MB experts grew the resident set 30%
        // past its budget. Fresh mappings are zero-filled and cost no memory until touched.
        let raw: UnsafeMutableRawPointer
        if bytes >= AlignedBuffer.mappingThreshold && alignment <= AlignedBuffer.pageSize,
           let mapped = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), mapped != MAP_FAILED {
            raw = mapped
            mappedBytes = bytes
        } else {
            raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: alignment)
            if zeroed { raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes) }
            mappedBytes = 0
        }
        pointer = raw.bindMemory(to: Element.self, capacity: max(count, 1))
    }

    /// Buffers of at least this many bytes are their own memory mapping.
    public static var mappingThreshold: Int { 64 << 10 }
    private static var pageSize: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }
    /// The mapping's length, or 0 for a malloc'd buffer.
    private let mappedBytes: Int

    /// Copies `elements` into a new aligned buffer.
    public convenience init(_ elements: [Element], alignment: Int = 64) {
        self.init(count: elements.count, alignment: alignment)
        elements.withUnsafeBufferPointer { source in
            if let base = source.baseAddress { pointer.update(from: base, count: elements.count) }
        }
    }

    deinit {
        if mappedBytes > 0 { munmap(UnsafeMutableRawPointer(pointer), mappedBytes) } else { UnsafeMutableRawPointer(pointer).deallocate() }
    }

    /// Size of the storage in bytes.
    public var byteCount: Int { count * MemoryLayout<Element>.stride }

    /// The elements as a buffer pointer.
    public var buffer: UnsafeMutableBufferPointer<Element> { UnsafeMutableBufferPointer(start: pointer, count: count) }

    /// Element access (bounds-checked in debug builds only).
    public subscript(index: Int) -> Element {
        get { assert(index >= 0 && index < count); return pointer[index] }
        set { assert(index >= 0 && index < count); pointer[index] = newValue }
    }

    /// A copy of the elements as an array.
    public var array: [Element] { Array(buffer) }
}
