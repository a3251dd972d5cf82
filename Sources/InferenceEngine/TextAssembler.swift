/// Turns a request's generated token ids into text pieces for streaming: never splits a UTF-8
/// sequence (incremental detokenization with a prefix/read offset, as vLLM does, so any
/// tokenizer's `decode` works) and holds back text that might be the start of a stop string,
/// which is cut and never shown.
public struct TextAssembler: Sendable {
    private let decode: @Sendable ([Int]) -> String
    private let stopStrings: [String]
    private var ids: [Int] = []
    private var prefixOffset = 0
    private var readOffset = 0
    /// Decoded text not yet released because it may begin a stop string.
    private var pending = ""

    public init(decode: @escaping @Sendable ([Int]) -> String, stopStrings: [String]) {
        self.decode = decode
        self.stopStrings = stopStrings.filter { !$0.isEmpty }
    }

    /// Adds a token; returns the text that can be released now and whether a stop string ended
    /// the generation (the released text then stops right before it).
    public mutating func append(_ id: Int) -> (text: String, stopped: Bool) {
        ids.append(id)
        let prefixText = decode(Array(ids[prefixOffset..<readOffset]))
        let fullText = decode(Array(ids[prefixOffset...]))
        // U+FFFD at the end means the last token ended inside a UTF-8 sequence: wait for more.
        guard fullText.count > prefixText.count, !fullText.hasSuffix("\u{FFFD}") else { return ("", false) }
        let newText = String(fullText.dropFirst(prefixText.count))
        prefixOffset = readOffset
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
