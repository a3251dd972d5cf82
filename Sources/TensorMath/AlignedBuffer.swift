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
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: alignment)
        if zeroed { raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes) }
        pointer = raw.bindMemory(to: Element.self, capacity: max(count, 1))
    }

    /// Copies `elements` into a new aligned buffer.
    public convenience init(_ elements: [Element], alignment: Int = 64) {
        self.init(count: elements.count, alignment: alignment)
        elements.withUnsafeBufferPointer { source in
            if let base = source.baseAddress { pointer.update(from: base, count: elements.count) }
        }
    }

    deinit { UnsafeMutableRawPointer(pointer).deallocate() }

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
