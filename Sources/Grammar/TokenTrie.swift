/// The vocabulary as a byte trie, built once per model: the tokens that share a prefix share the
/// grammar work for it, and a prefix no parse accepts prunes every token below it. This is what
/// makes one step's mask cheap: for JSON, most of the vocabulary is cut after its first byte.
public final class TokenTrie: Sendable {
    /// Number of token ids (the logits' length).
    public let vocabularySize: Int
    /// `children[node]`: (byte, child node), sorted by byte.
    let children: [[(UInt8, Int32)]]
    /// `ends[node]`: ids of the tokens whose bytes end at `node`.
    let ends: [[Int32]]
    /// Tokens that take part in the trie (tokens with text; special tokens do not).
    public let textTokenCount: Int

    /// A trie of `tokenBytes` (nil or empty for special tokens and ids without text, which a
    /// grammar never allows).
    public init(vocabularySize: Int, tokenBytes: (Int) -> [UInt8]?) {
        var children: [[(UInt8, Int32)]] = [[]]
        var ends: [[Int32]] = [[]]
        var count = 0
        for id in 0..<vocabularySize {
            guard let bytes = tokenBytes(id), !bytes.isEmpty else { continue }
            count += 1
            var node = 0
            for b in bytes {
                if let hit = children[node].first(where: { $0.0 == b }) {
                    node = Int(hit.1)
                } else {
                    let child = children.count
                    children.append([])
                    ends.append([])
                    children[node].append((b, Int32(child)))
                    node = child
                }
            }
            ends[node].append(Int32(id))
        }
        self.children = children.map { $0.sorted { $0.0 < $1.0 } }
        self.ends = ends
        self.vocabularySize = vocabularySize
        textTokenCount = count
    }

    /// Nodes in the trie (for reports).
    public var nodeCount: Int { children.count }

    /// The tokens `matcher` allows next, as a bit set over token ids (bit `id % 64` of word
    /// `id / 64`). `endTokens` (end of sequence) are allowed only when the text so far is a
    /// complete sentence.
    public func allowedTokens(_ matcher: GrammarMatcher, endTokens: Set<Int>) -> [UInt64] {
        var mask = [UInt64](repeating: 0, count: (vocabularySize + 63) / 64)
        let grammar = matcher.grammar
        let live = matcher.stacks.filter { !$0.isEmpty }
        if !live.isEmpty { walk(0, live, matcher.partial, grammar, &mask) }
        if matcher.isAccepting {
            for id in endTokens where id >= 0 && id < vocabularySize { mask[id >> 6] |= 1 << UInt64(id & 63) }
        }
        return mask
    }

    private func walk(_ node: Int, _ stacks: [[GrammarPosition]], _ partial: PartialUTF8, _ grammar: Grammar, _ mask: inout [UInt64]) {
        for (byte, child) in children[node] {
            var p = partial
            switch p.feed(byte) {
            case .invalid:
                continue
            case .pending:
                let (low, high) = p.completionRange
                guard GrammarMatcher.canTake(grammar, stacks, low, high) else { continue }
                mark(Int(child), &mask)
                walk(Int(child), stacks, p, grammar, &mask)
            case let .complete(c):
                let next = GrammarMatcher.advance(grammar, stacks, c)
                if next.isEmpty { continue }
                mark(Int(child), &mask)
                let live = next.filter { !$0.isEmpty }
                if !live.isEmpty, !children[Int(child)].isEmpty { walk(Int(child), live, PartialUTF8(), grammar, &mask) }
            }
        }
    }

    @inline(__always)
    private func mark(_ node: Int, _ mask: inout [UInt64]) {
        for id in ends[node] { mask[Int(id) >> 6] |= 1 << UInt64(id & 63) }
    }
}

extension [UInt64] {
    /// Whether bit `id` is set in a token bit set.
    @inlinable public func containsToken(_ id: Int) -> Bool { self[id >> 6] & (1 << UInt64(id & 63)) != 0 }
    /// How many bits are set.
    public var tokenCount: Int { reduce(0) { $0 + $1.nonzeroBitCount } }
}
