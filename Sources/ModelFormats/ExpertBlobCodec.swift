import CLZ4
import TensorMath

/// Compression of expert blobs.
///
/// Plain LZ4 finds nothing in weights (ratio ≈ 0.996 on bf16, f32 or int8): the low mantissa
/// bits are noise. For bf16 the blob is split into two byte planes first — the high bytes
/// (sign and 7 exponent bits, which cluster tightly around the weights' scale) and the low
/// bytes (1 exponent bit and 7 mantissa bits, incompressible) — and each plane is compressed on
/// its own. A plane, and the blob as a whole, is stored raw when compression saves less than
/// 3%, so a reader never pays decompression for nothing.
public enum ExpertBlobCodec {
    /// Compression must save at least this fraction or the bytes are stored raw.
    public static let minimumSaving = 0.03
    /// LZ4-HC level used at pack time. Measured on a bf16 exponent plane of Gaussian weights:
    /// fast LZ4 1.47x at ~95 MB/s, HC 3 1.65x at ~22 MB/s, HC 9 1.94x at ~3 MB/s (a 2.4 GB model
    /// took 11 minutes to pack). Level 3 keeps packing tolerable; the extra ratio of level 9 is
    /// worth it only on disks slower than about a third of the decode speed.
    public static let defaultHighCompressionLevel: Int32 = 3

    /// A blob ready to be written: its bytes and manifest fields.
    public struct Encoded {
        /// The bytes to store.
        public let bytes: AlignedBuffer<UInt8>
        /// Number of valid bytes in `bytes`.
        public let length: Int
        /// Stored uncompressed.
        public let storedRaw: Bool
        /// Plane entries when compressed.
        public let planes: [ExpertPlaneEntry]
    }

    /// Encodes the `rawLength` decoded bytes at `raw` for storage with `codec`.
    public static func encode(_ raw: AlignedBuffer<UInt8>, rawLength: Int, dtype: ExpertDType, codec: ExpertCodec,
                              level: Int32 = defaultHighCompressionLevel) -> Encoded {
        guard codec == .lz4 else { return Encoded(bytes: raw, length: rawLength, storedRaw: true, planes: []) }
        // The planes to compress: two for bf16, otherwise the blob as one.
        var planeSources: [AlignedBuffer<UInt8>] = []
        if dtype == .bf16 {
            let half = rawLength / 2
            let high = AlignedBuffer<UInt8>(count: half), low = AlignedBuffer<UInt8>(count: half)
            for i in 0..<half {
                low[i] = raw.pointer[2 * i]      // little-endian: byte 0 is the low (mantissa) byte
                high[i] = raw.pointer[2 * i + 1] // sign + exponent
            }
            planeSources = [high, low]
        } else {
            planeSources = [raw]
        }
        var pieces: [(bytes: UnsafeRawPointer, entry: ExpertPlaneEntry, keep: AlignedBuffer<UInt8>)] = []
        for (index, plane) in planeSources.enumerated() {
            let length = dtype == .bf16 ? rawLength / 2 : rawLength
            _ = index
            if let compressed = compress(plane.pointer, length: length, level: level) {
                pieces.append((UnsafeRawPointer(compressed.buffer.pointer), ExpertPlaneEntry(storedLength: compressed.length, rawLength: length, storedRaw: false), compressed.buffer))
            } else {
                pieces.append((UnsafeRawPointer(plane.pointer), ExpertPlaneEntry(storedLength: length, rawLength: length, storedRaw: true), plane))
            }
        }
        let total = pieces.reduce(0) { $0 + $1.entry.storedLength }
        guard Double(total) <= Double(rawLength) * (1 - minimumSaving) else {
            return Encoded(bytes: raw, length: rawLength, storedRaw: true, planes: [])
        }
        let out = AlignedBuffer<UInt8>(count: total, alignment: 4096)
        var cursor = 0
        for piece in pieces {
            UnsafeMutableRawPointer(out.pointer + cursor).copyMemory(from: piece.bytes, byteCount: piece.entry.storedLength)
            cursor += piece.entry.storedLength
        }
        return Encoded(bytes: out, length: total, storedRaw: false, planes: pieces.map(\.entry))
    }

    /// LZ4, then LZ4-HC when fast LZ4 found something; nil when neither saves `minimumSaving`.
    private static func compress(_ source: UnsafePointer<UInt8>, length: Int, level: Int32) -> (buffer: AlignedBuffer<UInt8>, length: Int)? {
        guard length > 0, length < Int(Int32.max) else { return nil }
        let bound = Int(LZ4_compressBound(Int32(length)))
        let fast = AlignedBuffer<UInt8>(count: bound)
        let fastLength = Int(LZ4_compress_default(UnsafeRawPointer(source).assumingMemoryBound(to: CChar.self),
                                                  UnsafeMutableRawPointer(fast.pointer).assumingMemoryBound(to: CChar.self),
                                                  Int32(length), Int32(bound)))
        let limit = Double(length) * (1 - minimumSaving)
        var best: (AlignedBuffer<UInt8>, Int)? = fastLength > 0 && Double(fastLength) <= limit ? (fast, fastLength) : nil
        // HC is 4-30x slower: spend it only on planes where fast LZ4 saw any redundancy at all
        // (mantissa planes are noise and would cost HC time for nothing).
        if level > 0 && fastLength > 0 && Double(fastLength) < Double(length) * 0.99 {
            let strong = AlignedBuffer<UInt8>(count: bound)
            let strongLength = Int(LZ4_compress_HC(UnsafeRawPointer(source).assumingMemoryBound(to: CChar.self),
                                                   UnsafeMutableRawPointer(strong.pointer).assumingMemoryBound(to: CChar.self),
                                                   Int32(length), Int32(bound), level))
            if strongLength > 0 && Double(strongLength) <= limit && strongLength < (best?.1 ?? Int.max) { best = (strong, strongLength) }
        }
        return best.map { (buffer: $0.0, length: $0.1) }
    }

    /// Decodes the stored bytes of `entry` at `stored` into `raw` (`entry.rawLength` bytes).
    /// Called only after the checksum matched; still bounds-checked, so a manifest that lies
    /// about lengths gives an error, never a write out of bounds.
    public static func decode(_ stored: UnsafeRawPointer, entry: ExpertBlobEntry, dtype: ExpertDType,
                              into raw: UnsafeMutableRawPointer, context: String) throws {
        if entry.storedRaw {
            guard entry.storedLength == entry.rawLength else { throw ModelFormatError("\(context): raw blob of \(entry.storedLength) bytes, expected \(entry.rawLength)") }
            if UnsafeRawPointer(raw) != stored { raw.copyMemory(from: stored, byteCount: entry.rawLength) }
            return
        }
        let expectedPlanes = dtype == .bf16 ? 2 : 1
        let planeLength = entry.rawLength / expectedPlanes
        guard entry.planes.count == expectedPlanes, entry.planes.allSatisfy({ $0.rawLength == planeLength }),
              entry.planes.reduce(0, { $0 + $1.storedLength }) == entry.storedLength else {
            throw ModelFormatError("\(context): plane table does not match the blob (\(entry.planes.count) planes)")
        }
        if expectedPlanes == 1 {
            try decompress(stored, plane: entry.planes[0], into: raw, context: context)
            return
        }
        // bf16: the high plane is decompressed into the second half of the destination and
        // interleaved in place (see `interleave`), so the common case (mantissa plane stored
        // raw) needs no scratch memory at all.
        let secondHalf = raw + planeLength
        try decompress(stored, plane: entry.planes[0], into: secondHalf, context: context)
        let lowStored = stored + entry.planes[0].storedLength
        if entry.planes[1].storedRaw {
            interleave(high: UnsafeRawPointer(secondHalf), low: lowStored, count: planeLength, into: raw)
        } else {
            let scratch = AlignedBuffer<UInt8>(count: planeLength, zeroed: false)
            try decompress(lowStored, plane: entry.planes[1], into: scratch.pointer, context: context)
            interleave(high: UnsafeRawPointer(secondHalf), low: UnsafeRawPointer(scratch.pointer), count: planeLength, into: raw)
        }
    }

    private static func decompress(_ source: UnsafeRawPointer, plane: ExpertPlaneEntry, into destination: UnsafeMutableRawPointer, context: String) throws {
        if plane.storedRaw {
            guard plane.storedLength == plane.rawLength else { throw ModelFormatError("\(context): raw plane length mismatch") }
            destination.copyMemory(from: source, byteCount: plane.rawLength)
            return
        }
        let produced = LZ4_decompress_safe(source.assumingMemoryBound(to: CChar.self), destination.assumingMemoryBound(to: CChar.self),
                                           Int32(plane.storedLength), Int32(plane.rawLength))
        guard Int(produced) == plane.rawLength else {
            throw ModelFormatError("\(context): LZ4 data is damaged (decoded \(produced) of \(plane.rawLength) bytes)")
        }
    }

    /// `out[2i] = low[i]`, `out[2i+1] = high[i]`: rebuilds little-endian bf16 from its planes.
    /// `high` may be `out + count` (in place): block i reads high[i..<i+16] before writing
    /// out[2i..<2i+32], which ends at or before the next unread high byte `out[count+i+16]`
    /// because i + 16 ≤ count.
    static func interleave(high: UnsafeRawPointer, low: UnsafeRawPointer, count: Int, into out: UnsafeMutableRawPointer) {
        var i = 0
        while i + 16 <= count {
            let h = SIMD16<UInt16>(truncatingIfNeeded: high.loadUnaligned(fromByteOffset: i, as: SIMD16<UInt8>.self))
            let l = SIMD16<UInt16>(truncatingIfNeeded: low.loadUnaligned(fromByteOffset: i, as: SIMD16<UInt8>.self))
            out.storeBytes(of: (h &<< 8) | l, toByteOffset: 2 * i, as: SIMD16<UInt16>.self)
            i += 16
        }
        while i < count {
            out.storeBytes(of: UInt16(high.load(fromByteOffset: i, as: UInt8.self)) << 8 | UInt16(low.load(fromByteOffset: i, as: UInt8.self)),
                           toByteOffset: 2 * i, as: UInt16.self)
            i += 1
        }
    }
}
