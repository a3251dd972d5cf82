/// Incremental detokenization for streaming completions.
///
/// ``push(_:)`` returns the text that the new token completes, possibly empty; ``flush()`` returns
/// whatever is still held back at the end. A piece never ends inside a UTF-8 sequence (bytes of an
/// incomplete character are held until the character is complete), and the concatenation of all
/// pieces equals `tokenizer.decode(allIds)` exactly.
///
/// Each step decodes only a short window: the ids emitted by the previous step (as context, so that
/// decoders that look at neighbouring tokens, like SentencePiece's leading-space `Strip`, see the same
/// thing as a full decode) plus the ids not yet emitted.
public struct StreamingDetokenizer: Sendable {
    private let tokenizer: Tokenizer
    private let skipSpecialTokens: Bool
    /// Context ids (already emitted) followed by pending ids.
    private var window: [Int] = []
    /// How many leading ids of `window` are context.
    private var contextCount = 0
    /// `decode(window[0..<contextCount])`.
    private var contextText: [UInt8] = []
    /// Every id pushed so far and the bytes emitted so far, for the (defensive) fallback path.
    private var allIds: [Int] = []
    private var emitted: [UInt8] = []

    /// Creates a detokenizer for `tokenizer`.
    public init(tokenizer: Tokenizer, skipSpecialTokens: Bool = false) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    /// Adds one generated token and returns the newly completed text (possibly empty).
    public mutating func push(_ id: Int) -> String {
        window.append(id)
        allIds.append(id)
        // A `<0xXX>` token may still be joined with the next ones by a ByteFallback decoder.
        if tokenizer.isPendingByte(id) { return "" }
        let text = Array(tokenizer.decode(window, skipSpecialTokens: skipSpecialTokens).utf8)
        guard text.count > contextText.count, !Self.endsWithReplacement(text),
              text.starts(with: contextText) else { return "" }
        let piece = Array(text[contextText.count...])
        // The ids just emitted become the context of the next step.
        window.removeFirst(contextCount)
        contextCount = window.count
        contextText = Array(tokenizer.decode(window, skipSpecialTokens: skipSpecialTokens).utf8)
        emitted += piece
        return String(decoding: piece, as: UTF8.self)
    }

    /// Returns the text still held back (an incomplete character, trailing byte tokens) and resets.
    public mutating func flush() -> String {
        defer {
            window.removeAll()
            contextCount = 0
            contextText = []
            allIds.removeAll()
            emitted.removeAll()
        }
        let full = Array(tokenizer.decode(allIds, skipSpecialTokens: skipSpecialTokens).utf8)
        if full.starts(with: emitted) {
            return String(decoding: full[emitted.count...], as: UTF8.self)
        }
        let text = Array(tokenizer.decode(window, skipSpecialTokens: skipSpecialTokens).utf8)
        guard text.count > contextText.count, text.starts(with: contextText) else { return "" }
        return String(decoding: text[contextText.count...], as: UTF8.self)
    }

    /// Whether `bytes` ends with U+FFFD (EF BF BD), the mark of a possibly incomplete character.
    private static func endsWithReplacement(_ bytes: [UInt8]) -> Bool {
        let n = bytes.count
        return n >= 3 && bytes[n - 3] == 0xEF && bytes[n - 2] == 0xBF && bytes[n - 1] == 0xBD
    }
}
