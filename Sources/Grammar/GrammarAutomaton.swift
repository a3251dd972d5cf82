/// The matcher's parse-stack sets interned as numbered states, with their transitions cached as
/// they are discovered (a lazily built DFA). A token mask walks the vocabulary trie through this
/// table, so after the first visits a character costs one array or dictionary lookup instead of
/// rebuilding stack sets: inside a JSON string every character leads back to the same state.
/// Owned by one sequence (not thread-safe); memory grows with the states visited (tens for JSON).
public final class GrammarAutomaton {
    /// The grammar.
    public let grammar: Grammar
    private var ids: [Set<[GrammarPosition]>: Int32] = [:]
    /// `stacks[state]`: the live (non-empty) stacks of the state.
    private var stacks: [[[GrammarPosition]]] = []
    /// Whether the state is a complete sentence / can take no more characters.
    private(set) var accepting: [Bool] = []
    private(set) var closed: [Bool] = []
    /// ASCII transitions: -2 unknown, -1 dead, else the next state.
    private var ascii: [[Int32]] = []
    private var other: [[UInt32: Int32]] = []
    private var ranges: [RangeKey: Bool] = [:]

    private struct RangeKey: Hashable { let state: Int32, low: UInt32, high: UInt32 }

    /// An automaton for `grammar`; state 0 is the start.
    public init(grammar: Grammar) {
        self.grammar = grammar
        _ = intern(GrammarMatcher(grammar: grammar).stacks)
    }

    /// The start state.
    public var start: Int32 { 0 }
    /// States discovered so far.
    public var stateCount: Int { stacks.count }

    func intern(_ all: [[GrammarPosition]]) -> Int32 {
        let key = Set(all)
        if let id = ids[key] { return id }
        let id = Int32(stacks.count)
        ids[key] = id
        let live = all.filter { !$0.isEmpty }
        stacks.append(live)
        accepting.append(all.contains { $0.isEmpty })
        closed.append(live.isEmpty)
        ascii.append([Int32](repeating: -2, count: 128))
        other.append([:])
        return id
    }

    /// The state after code point `c`, or -1 when no parse takes it.
    @inline(__always)
    public func step(_ state: Int32, _ c: UInt32) -> Int32 {
        let s = Int(state)
        if c < 128 {
            let cached = ascii[s][Int(c)]
            if cached != -2 { return cached }
        } else if let cached = other[s][c] {
            return cached
        }
        let next = GrammarMatcher.advance(grammar, stacks[s], c)
        let id: Int32 = next.isEmpty ? -1 : intern(next)
        if c < 128 { ascii[s][Int(c)] = id } else { other[s][c] = id }
        return id
    }

    /// Whether some parse of `state` takes a code point in `low...high` (a token ending inside a
    /// UTF-8 sequence).
    public func canTake(_ state: Int32, _ low: UInt32, _ high: UInt32) -> Bool {
        let key = RangeKey(state: state, low: low, high: high)
        if let hit = ranges[key] { return hit }
        let answer = GrammarMatcher.canTake(grammar, stacks[Int(state)], low, high)
        ranges[key] = answer
        return answer
    }

    /// Whether `state` is a complete sentence.
    public func isAccepting(_ state: Int32) -> Bool { accepting[Int(state)] }
    /// Whether nothing can follow `state`.
    public func isClosed(_ state: Int32) -> Bool { closed[Int(state)] }

    /// Runs `bytes` from (`state`, `partial`); nil when they break the grammar.
    public func run(_ state: Int32, _ partial: PartialUTF8, _ bytes: [UInt8]) -> (Int32, PartialUTF8)? {
        var s = state
        var p = partial
        for b in bytes {
            switch p.feed(b) {
            case .invalid: return nil
            case .pending: continue
            case let .complete(c):
                s = step(s, c)
                if s < 0 { return nil }
            }
        }
        if p.remaining > 0 {
            let (low, high) = p.completionRange
            guard canTake(s, low, high) else { return nil }
        }
        return (s, p)
    }
}

extension TokenTrie {
    /// The tokens allowed in (`state`, `partial`) of `automaton`, as a bit set over token ids;
    /// `endTokens` only when the state is a complete sentence. Same answer as
    /// `allowedTokens(_:endTokens:)` on the equivalent matcher, at a fraction of the cost.
    public func allowedTokens(_ automaton: GrammarAutomaton, state: Int32, partial: PartialUTF8, endTokens: Set<Int>) -> [UInt64] {
        var mask = [UInt64](repeating: 0, count: (vocabularySize + 63) / 64)
        if !automaton.isClosed(state) { walk(0, state, partial, automaton, &mask) }
        if partial.remaining == 0 && automaton.isAccepting(state) {
            for id in endTokens where id >= 0 && id < vocabularySize { mask[id >> 6] |= 1 << UInt64(id & 63) }
        }
        return mask
    }

    private func walk(_ node: Int, _ state: Int32, _ partial: PartialUTF8, _ automaton: GrammarAutomaton, _ mask: inout [UInt64]) {
        for (byte, child) in children[node] {
            var p = partial
            switch p.feed(byte) {
            case .invalid:
                continue
            case .pending:
                let (low, high) = p.completionRange
                guard automaton.canTake(state, low, high) else { continue }
                for id in ends[Int(child)] { mask[Int(id) >> 6] |= 1 << UInt64(id & 63) }
                walk(Int(child), state, p, automaton, &mask)
            case let .complete(c):
                let next = automaton.step(state, c)
                if next < 0 { continue }
                for id in ends[Int(child)] { mask[Int(id) >> 6] |= 1 << UInt64(id & 63) }
                if !automaton.isClosed(next), !children[Int(child)].isEmpty { walk(Int(child), next, PartialUTF8(), automaton, &mask) }
            }
        }
    }
}
