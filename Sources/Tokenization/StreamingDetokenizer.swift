/// Incremental detokenization for streaming completions.
///
/// ``push(_:)`` returns the text that the new token completes, possibly empty; ``flush()`` returns
/// whatever is still held back at the end. A piece never ends inside a UTF-8 sequence (bytes of an
/// incomplete character are held until the character is complete), and the concatenation of all
/// pieces equals `tokenizer.decode(allIds)` exactly.
///
/// Every step costs O(1) whatever the ids (a test checks that the work is linear):
/// - With a `ByteLevel` decoder (GPT-2, Qwen, OLMoE style) the text is the UTF-8 decoding of the
///   tokens' bytes laid end to end, so the detokenizer keeps bytes, not ids: a token's bytes go out at
///   once unless they end in a valid but unfinished UTF-8 sequence, which is held (at most 3 bytes).
///   A U+FFFD from an invalid byte or a real U+FFFD in the text is final and goes out at once.
/// - Other decoders (SentencePiece style, which look at neighbouring tokens) decode a short window:
///   the ids emitted by the previous step, as context, plus the ids not yet emitted. A trailing U+FFFD
///   holds the window back only while a `<0xXX>` run may still complete a character, ids that decode
///   to nothing never enter it, and after ``maxPendingIds`` ids without output (which only a hostile
///   stream reaches) the held text goes out as it decodes then.
public struct StreamingDetokenizer: Sendable {
    /// Pending ids (of the window path) after which held text is emitted regardless.
    static let maxPendingIds = 16

    private let tokenizer: Tokenizer
    private let skipSpecialTokens: Bool
    /// Whether this stream keeps bytes (a `ByteLevel` decoder) rather than a window of ids.
    private let byteLevel: Bool
    /// Byte path: bytes of an unfinished UTF-8 sequence not yet emitted (at most 3 after each push).
    private var pendingBytes: [UInt8] = []
    /// Window path: context ids (already emitted) followed by pending ids.
    private var window: [Int] = []
    /// How many leading ids of `window` are context.
    private var contextCount = 0
    /// `decode(window[0..<contextCount])`.
    private var contextText: [UInt8] = []
    /// Every id pushed so far and the bytes emitted so far, for the (defensive) fallback path.
    private var allIds: [Int] = []
    private var emitted: [UInt8] = []
    /// How many ids the tokenizer has been given to decode so far: the work done, which a test checks
    /// grows linearly with the ids pushed.
    private(set) var decodedIds = 0

    /// Creates a detokenizer for `tokenizer`.
    public init(tokenizer: Tokenizer, skipSpecialTokens: Bool = false) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
        byteLevel = tokenizer.decodesByteLevelOnly
    }

    /// Adds one generated token and returns the newly completed text (possibly empty).
    public mutating func push(_ id: Int) -> String {
        // Unknown ids (and special tokens when skipping them) are left out by `decode` too.
        if tokenizer.decodesToNothing(id, skipSpecialTokens: skipSpecialTokens) { return "" }
        if byteLevel {
            decodedIds += 1
            tokenizer.appendByteLevelBytes(of: id, to: &pendingBytes)
            if Decoder.endsInUnfinishedUTF8(pendingBytes.suffix(4)) { return "" }
            defer { pendingBytes.removeAll(keepingCapacity: true) }
            return String(decoding: pendingBytes, as: UTF8.self)
        }
        window.append(id)
        allIds.append(id)
        // A `<0xXX>` token may still be joined with the next ones by a ByteFallback decoder. Holding it
        // costs nothing: the run is decoded once, when a token that is not a byte arrives.
        if tokenizer.isPendingByte(id) { return "" }
        let text = decode(window[...])
        if text.count > contextText.count, text.starts(with: contextText),
           !(Self.endsWithReplacement(text)
               && tokenizer.mayEndInsideCharacter(window[...], skipSpecialTokens: skipSpecialTokens)) {
            return emit(text[contextText.count...])
        }
        guard window.count - contextCount > Self.maxPendingIds else { return "" }
        // Too long without output: emit what decodes now. If the context's text changed, the pending
        // ids are decoded on their own.
        if text.starts(with: contextText) { return emit(text[contextText.count...]) }
        return emit(decode(window[contextCount...])[...])
    }

    /// Returns the text still held back (an incomplete character, trailing byte tokens) and resets.
    public mutating func flush() -> String {
        if byteLevel {
            defer { pendingBytes.removeAll() }
            return String(decoding: pendingBytes, as: UTF8.self)
        }
        defer {
            window.removeAll()
            contextCount = 0
            contextText = []
            allIds.removeAll()
            emitted.removeAll()
        }
        let full = decode(allIds[...])
        if full.starts(with: emitted) {
            return String(decoding: full[emitted.count...], as: UTF8.self)
        }
        let text = decode(window[...])
        guard text.starts(with: contextText) else {
            return String(decoding: decode(window[contextCount...]), as: UTF8.self)
        }
        return String(decoding: text[contextText.count...], as: UTF8.self)
    }

    /// Emits `piece`; the pending ids become the context of the next step.
    private mutating func emit(_ piece: ArraySlice<UInt8>) -> String {
        let out = String(decoding: piece, as: UTF8.self)
        emitted += piece
        window.removeFirst(contextCount)
        contextCount = window.count
        contextText = decode(window[...])
        return out
    }

    private mutating func decode(_ ids: ArraySlice<Int>) -> [UInt8] {
        decodedIds += ids.count
        return Array(tokenizer.decode(Array(ids), skipSpecialTokens: skipSpecialTokens).utf8)
    }

    /// Whether `bytes` ends with U+FFFD (EF BF BD), the mark of a possibly incomplete character.
    private static func endsWithReplacement(_ bytes: [UInt8]) -> Bool {
        let n = bytes.count
        return n >= 3 && bytes[n - 3] == 0xEF && bytes[n - 2] == 0xBF && bytes[n - 1] == 0xBD
    }
}
