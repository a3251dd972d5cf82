/// Where a parse stands inside one rule: alternative `alt` of rule `rule`, next element `index`.
public struct GrammarPosition: Hashable, Sendable {
    var rule: Int32
    var alt: Int32
    var index: Int32
}

/// A UTF-8 sequence begun by one token and finished by the next (byte-level vocabularies split
/// multi-byte characters across tokens).
public struct PartialUTF8: Hashable, Sendable {
    /// The bits decoded so far.
    var value: UInt32 = 0
    /// Continuation bytes still expected; 0 when no sequence is open.
    public internal(set) var remaining: Int = 0

    /// No sequence open.
    public init() {}

    /// The interval of code points this partial sequence can still complete into (at least its
    /// `minimum`: a lead byte E0 alone must not let a grammar that wants "a" take it).
    var completionRange: (UInt32, UInt32) {
        let shift = UInt32(6 * remaining)
        let low = value << shift
        return (max(low, minimum), min(low | ((1 << shift) - 1), 0x10FFFF))
    }

    /// Feeds one byte: the completed code point, or nil with `self` updated; throws nothing but
    /// returns `.invalid` for bytes that cannot continue or start a sequence.
    enum Step { case complete(UInt32), pending, invalid }

    /// The smallest code point the open sequence may encode (shorter encodings are overlong).
    var minimum: UInt32 = 0

    /// Strict UTF-8 (as decoders check it): no overlong forms, no surrogates, nothing past U+10FFFF,
    /// so constrained output always decodes without replacement characters.
    @inline(__always)
    mutating func feed(_ b: UInt8) -> Step {
        if remaining == 0 {
            if b < 0x80 { return .complete(UInt32(b)) }
            if b >= 0xC2 && b <= 0xDF { value = UInt32(b & 0x1F); remaining = 1; minimum = 0x80; return .pending }
            if b & 0xF0 == 0xE0 { value = UInt32(b & 0x0F); remaining = 2; minimum = 0x800; return .pending }
            if b >= 0xF0 && b <= 0xF4 { value = UInt32(b & 0x07); remaining = 3; minimum = 0x10000; return .pending }
            return .invalid
        }
        guard b & 0xC0 == 0x80 else { return .invalid }
        value = value << 6 | UInt32(b & 0x3F)
        remaining -= 1
        if remaining == 0 {
            let v = value
            value = 0
            guard v >= minimum, v <= 0x10FFFF, !(0xD800...0xDFFF).contains(v) else { return .invalid }
            return .complete(v)
        }
        // Reject an open sequence as soon as it can only end overlong, as a surrogate or past
        // U+10FFFF (E0 80-9F, ED A0-BF, F0 80-8F, F4 90-BF): otherwise its completion range
        // overlaps what the grammar wants (E0 81 could still become an overlong "a"), a token
        // with those bytes is allowed, and no next token can complete it.
        let (low, high) = completionRange
        if low > high || (low >= 0xD800 && high <= 0xDFFF) { return .invalid }
        return .pending
    }
}

/// The state of a grammar-constrained generation: every way the text so far can be parsed, as
/// a set of stacks of positions (llama.cpp's approach: a pushdown automaton run non-deterministically).
/// Each stack's top is a code point class to match next; an empty stack means the text so far is
/// a complete sentence of the grammar. A pure value: copying it forks the parse.
public struct GrammarMatcher: Sendable {
    /// The grammar.
    public let grammar: Grammar
    /// Every live parse; never contains a stack whose top is a rule reference.
    public private(set) var stacks: [[GrammarPosition]]
    /// An unfinished UTF-8 sequence from the last bytes accepted.
    public private(set) var partial = PartialUTF8()

    /// The state before any text.
    public init(grammar: Grammar) {
        self.grammar = grammar
        var start = Set<[GrammarPosition]>()
        for (a, alternative) in grammar.rules[grammar.root].enumerated() {
            let stack = alternative.isEmpty ? [] : [GrammarPosition(rule: Int32(grammar.root), alt: Int32(a), index: 0)]
            Self.expand(grammar, stack, into: &start)
        }
        stacks = Array(start)
    }

    /// Whether the text so far is a complete sentence (end of sequence may come now).
    public var isAccepting: Bool { partial.remaining == 0 && stacks.contains { $0.isEmpty } }
    /// Whether nothing more can follow: the sentence is complete and no parse can continue.
    public var isComplete: Bool { partial.remaining == 0 && stacks.allSatisfy { $0.isEmpty } && !stacks.isEmpty }
    /// Whether no parse survives (the text is not a prefix of any sentence).
    public var isDead: Bool { stacks.isEmpty }

    /// Replaces rule references on top of `stack` by each of their alternatives until every
    /// resulting stack has a code point class on top (or is empty), adding them to `out`.
    static func expand(_ grammar: Grammar, _ stack: [GrammarPosition], into out: inout Set<[GrammarPosition]>) {
        guard let top = stack.last else { out.insert(stack); return }
        let element = grammar.rules[Int(top.rule)][Int(top.alt)][Int(top.index)]
        guard case let .rule(r) = element else { out.insert(stack); return }
        var base = stack
        base.removeLast()
        let next = top.index + 1
        if Int(next) < grammar.rules[Int(top.rule)][Int(top.alt)].count {
            base.append(GrammarPosition(rule: top.rule, alt: top.alt, index: next))
        }
        for (a, alternative) in grammar.rules[r].enumerated() {
            var s = base
            if !alternative.isEmpty { s.append(GrammarPosition(rule: Int32(r), alt: Int32(a), index: 0)) }
            expand(grammar, s, into: &out)
        }
    }

    /// The parses that survive code point `c` (empty stacks cannot consume anything and drop out).
    static func advance(_ grammar: Grammar, _ stacks: [[GrammarPosition]], _ c: UInt32) -> [[GrammarPosition]] {
        var out = Set<[GrammarPosition]>()
        for stack in stacks {
            guard let top = stack.last else { continue }
            guard case let .chars(set) = grammar.rules[Int(top.rule)][Int(top.alt)][Int(top.index)], set.contains(c) else { continue }
            var s = stack
            s.removeLast()
            let next = top.index + 1
            if Int(next) < grammar.rules[Int(top.rule)][Int(top.alt)].count {
                s.append(GrammarPosition(rule: top.rule, alt: top.alt, index: next))
            }
            expand(grammar, s, into: &out)
        }
        return Array(out)
    }

    /// Whether some parse in `stacks` can take a code point in `low...high` next.
    static func canTake(_ grammar: Grammar, _ stacks: [[GrammarPosition]], _ low: UInt32, _ high: UInt32) -> Bool {
        for stack in stacks {
            guard let top = stack.last else { continue }
            if case let .chars(set) = grammar.rules[Int(top.rule)][Int(top.alt)][Int(top.index)], set.intersects(low, high) { return true }
        }
        return false
    }

    /// Accepts one code point; false (and the state unchanged) when no parse allows it.
    @discardableResult
    public mutating func accept(codePoint c: UInt32) -> Bool {
        guard partial.remaining == 0 else { return false }
        let next = Self.advance(grammar, stacks, c)
        guard !next.isEmpty else { return false }
        stacks = next
        return true
    }

    /// Accepts UTF-8 bytes (a token's bytes; a trailing partial character is kept for the next
    /// call). False, with the state unchanged, when the bytes break the grammar.
    @discardableResult
    public mutating func accept(bytes: [UInt8]) -> Bool {
        var p = partial
        var s = stacks
        for b in bytes {
            switch p.feed(b) {
            case .invalid: return false
            case .pending: continue
            case let .complete(c):
                s = Self.advance(grammar, s, c)
                if s.isEmpty { return false }
            }
        }
        if p.remaining > 0 {
            let (low, high) = p.completionRange
            guard Self.canTake(grammar, s, low, high) else { return false }
        }
        stacks = s
        partial = p
        return true
    }

    /// Accepts text; false when it breaks the grammar.
    @discardableResult
    public mutating func accept(_ text: String) -> Bool { accept(bytes: Array(text.utf8)) }
}
