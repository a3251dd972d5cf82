import Foundation

extension Tokenizer {
    /// The UTF-8 bytes token `id` stands for inside a text, as grammar-constrained decoding matches
    /// them: byte-level tokens mapped back through the GPT-2 byte table, `<0xXX>` byte-fallback tokens
    /// as their byte, SentencePiece `▁` as a space, added (non-special) tokens as their content. Nil
    /// for special tokens and unknown ids: a grammar never allows them. A token may hold part of a
    /// UTF-8 sequence (byte-level vocabularies split characters), so this is bytes, not a String.
    public func tokenBytes(_ id: Int) -> [UInt8]? {
        guard let token = token(for: id) else { return nil }
        if let added = addedById[id] {
            return added.special ? nil : Array(added.content.utf8)
        }
        if decoderUsesByteLevel {
            var bytes: [UInt8] = []
            for s in token.unicodeScalars {
                guard let b = ByteLevelTable.byte(for: s) else { return Array(token.utf8) }
                bytes.append(b)
            }
            return bytes
        }
        if decoderHasByteFallback, let b = Decoder.byteFallbackValue(token) { return [b] }
        return Array(token.replacingOccurrences(of: "\u{2581}", with: " ").utf8)
    }

    /// Whether the decoder chain maps tokens through the byte-level table.
    var decoderUsesByteLevel: Bool {
        func uses(_ d: Decoder) -> Bool {
            switch d {
            case .byteLevel: return true
            case .sequence(let items): return items.contains(where: uses)
            default: return false
            }
        }
        return decoder.map(uses) ?? false
    }
}
