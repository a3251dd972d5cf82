/// GPT-2's reversible byte-to-unicode table used by the `ByteLevel` pre-tokenizer and decoder.
enum ByteLevelTable {
    /// `byteToScalar[b]` is the printable character standing for byte `b`.
    static let byteToScalar: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var n: UInt32 = 0
        for b in 0..<256 {
            let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
            if printable {
                table[b] = Unicode.Scalar(UInt32(b))!
            } else {
                table[b] = Unicode.Scalar(256 + n)!
                n += 1
            }
        }
        return table
    }()

    /// Inverse of `byteToScalar`, indexed by scalar value (all values are below 324).
    static let scalarToByte: [Int16] = {
        var inverse = [Int16](repeating: -1, count: 512)
        for (b, s) in byteToScalar.enumerated() { inverse[Int(s.value)] = Int16(b) }
        return inverse
    }()

    /// The byte a character stands for, or nil if it is not in the table.
    @inline(__always)
    static func byte(for scalar: Unicode.Scalar) -> UInt8? {
        let v = Int(scalar.value)
        guard v < 512 else { return nil }
        let b = scalarToByte[v]
        return b < 0 ? nil : UInt8(b)
    }
}
