/// Reads a gpt-oss (harmony) reply as it streams: a sequence of messages, each a header (the
/// channel, and for a tool call the recipient `to=functions.name`), `<|message|>`, a body, and
/// `<|end|>`, `<|call|>` or `<|return|>`; later messages start with `<|start|>assistant`.
/// The `final` channel's body is content (streamed as it arrives); a body addressed to a
/// function is a call (the header from `to=functions.` on, `<|message|>` and the arguments, for
/// `ToolCallFormat.harmony.parseBody`), released when it ends; other channels (`analysis`: the
/// model's reasoning) are left out. Text with no harmony markup at all is content.
struct HarmonyToolStream {
    private enum State {
        case header
        case content
        case call(header: String)
        case hidden
    }
    private var state = State.header
    private var buffer = ""
    /// Whether any `<|message|>` was seen (without one, the whole text is content).
    private var sawMessage = false

    static let message = "<|message|>", start = "<|start|>"
    static let ends = ["<|end|>", "<|call|>", "<|return|>"]

    /// Adds text; returns content to show now and the call bodies completed.
    mutating func push(_ text: String) -> (content: String, calls: [String]) {
        buffer += text
        var content = "", calls: [String] = []
        while true {
            switch state {
            case .header:
                guard let r = buffer.range(of: Self.message) else { return (content, calls) }
                var header = String(buffer[..<r.lowerBound])
                buffer = String(buffer[r.upperBound...])
                sawMessage = true
                if header.hasPrefix(Self.start) { header.removeFirst(Self.start.count) }
                if let to = header.range(of: "to=functions.") {
                    state = .call(header: String(header[to.upperBound...]))
                } else if header.contains("<|channel|>") && !header.contains("<|channel|>final") {
                    state = .hidden
                } else {
                    state = .content
                }
            case .content, .call, .hidden:
                if let (r, _) = Self.firstEnd(in: buffer) {
                    let body = String(buffer[..<r.lowerBound])
                    buffer = String(buffer[r.upperBound...])
                    switch state {
                    case .content: content += body
                    case .call(let header): calls.append(header + Self.message + body)
                    default: break
                    }
                    state = .header
                    continue
                }
                if case .content = state {
                    // Stream the body, holding back what may begin an end marker.
                    let held = Self.heldSuffix(buffer)
                    content += buffer.dropLast(held)
                    buffer = String(buffer.suffix(held))
                }
                return (content, calls)
            }
        }
    }

    /// Releases what is left at the end (a call cut by its `<|call|>` stop token ends here).
    mutating func finish() -> (content: String, calls: [String]) {
        defer { buffer = ""; state = .header }
        switch state {
        case .header: return (sawMessage ? "" : buffer, [])
        case .content: return (buffer, [])
        case .call(let header): return ("", [header + Self.message + buffer])
        case .hidden: return ("", [])
        }
    }

    private static func firstEnd(in text: String) -> (Range<String.Index>, String)? {
        ends.compactMap { end in text.range(of: end).map { ($0, end) } }.min { $0.0.lowerBound < $1.0.lowerBound }
    }

    private static func heldSuffix(_ text: String) -> Int {
        var held = 0
        for end in ends {
            for n in stride(from: min(end.count - 1, text.count), through: 1, by: -1) where n > held && text.hasSuffix(end.prefix(n)) {
                held = n
                break
            }
        }
        return held
    }
}
