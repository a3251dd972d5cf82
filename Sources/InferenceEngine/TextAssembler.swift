/// Turns a request's generated token ids into text pieces for streaming: never splits a UTF-8
/// sequence (incremental detokenization with a prefix/read offset, as vLLM does, so any
/// tokenizer's `decode` works) and holds back text that might be the start of a stop string,
/// which is cut and never shown.
///
/// Each token costs O(1): the decoded window is the ids of the last released piece (context)
/// plus those held since, and at most `maxPendingIds` are held. Only a stream that never
/// completes a character (stray UTF-8 continuation bytes: the text keeps ending in U+FFFD) or
/// whose ids decode to nothing reaches the bound; without it every token decoded the whole held
/// run again (quadratic in the run).
public struct TextAssembler: Sendable {
    /// Held ids after which the text goes out as it decodes then (U+FFFD included), or, when
    /// they add no text, are dropped from the window.
    static let maxPendingIds = 16

    private let decode: @Sendable ([Int]) -> String
    private let stopStrings: [String]
    private var ids: [Int] = []
    private var prefixOffset = 0
    private var readOffset = 0
    /// Decoded text not yet released because it may begin a stop string.
    private var pending = ""
    /// How many ids `decode` has been given so far: the work done, which a test checks grows
    /// linearly with the tokens appended.
    private(set) var decodedIds = 0

    public init(decode: @escaping @Sendable ([Int]) -> String, stopStrings: [String]) {
        self.decode = decode
        self.stopStrings = stopStrings.filter { !$0.isEmpty }
    }

    /// Adds a token; returns the text that can be released now and whether a stop string ended
    /// the generation (the released text then stops right before it).
    public mutating func append(_ id: Int) -> (text: String, stopped: Bool) {
        ids.append(id)
        decodedIds += ids.count - prefixOffset + readOffset - prefixOffset
        let prefixText = decode(Array(ids[prefixOffset..<readOffset]))
        let fullText = decode(Array(ids[prefixOffset...]))
        let overdue = ids.count - readOffset > Self.maxPendingIds
        guard fullText.count > prefixText.count else {
            // Held ids that add no text (after the bound) leave the window: they never will.
            if overdue { ids.removeSubrange(readOffset...) }
            return ("", false)
        }
        // U+FFFD at the end means the last token ended inside a UTF-8 sequence: wait for more
        // (up to the bound).
        if fullText.hasSuffix("\u{FFFD}") && !overdue { return ("", false) }
        let newText = String(fullText.dropFirst(prefixText.count))
        // Only the new context stays: the ids before it are never decoded again.
        ids.removeFirst(readOffset)
        prefixOffset = 0
        readOffset = ids.count
        pending += newText
        return release()
    }

    /// Whatever is still held back, released at the end of generation.
    public mutating func finish() -> String {
        defer { pending = "" }
        return pending
    }

    private mutating func release() -> (text: String, stopped: Bool) {
        guard !stopStrings.isEmpty else { defer { pending = "" }; return (pending, false) }
        // Earliest stop string occurrence wins.
        var earliest: Range<String.Index>?
        for stop in stopStrings {
            if let range = pending.range(of: stop), earliest == nil || range.lowerBound < earliest!.lowerBound {
                earliest = range
            }
        }
        if let earliest {
            let text = String(pending[..<earliest.lowerBound])
            pending = ""
            return (text, true)
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        var held = 0
        for stop in stopStrings {
            for length in stride(from: min(stop.count - 1, pending.count), to: held, by: -1)
            where pending.hasSuffix(stop.prefix(length)) {
                held = length
                break
            }
        }
        let text = String(pending.dropLast(held))
        pending = String(pending.suffix(held))
        return (text, false)
    }
}
