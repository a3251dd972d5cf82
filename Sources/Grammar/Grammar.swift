/// A set of Unicode code points: inclusive ranges, optionally negated (`[^"\\]`, `.`).
public struct CodePointSet: Hashable, Sendable {
    /// Inclusive ranges as (low, high) pairs.
    public var ranges: [ClosedRange<UInt32>]
    /// Matches every code point *not* in `ranges`.
    public var negated: Bool

    /// A set of `ranges`, negated or not.
    public init(_ ranges: [ClosedRange<UInt32>], negated: Bool = false) {
        self.ranges = ranges
        self.negated = negated
    }

    /// Whether `c` is in the set.
    @inline(__always)
    public func contains(_ c: UInt32) -> Bool {
        var inside = false
        for r in ranges where r.contains(c) { inside = true; break }
        return inside != negated
    }

    /// Whether some code point in `low...high` is in the set (used for a token that ends inside a
    /// UTF-8 sequence: the code point it will complete lies in that interval).
    public func intersects(_ low: UInt32, _ high: UInt32) -> Bool {
        if !negated { return ranges.contains { $0.lowerBound <= high && $0.upperBound >= low } }
        // Negated: some point of low...high escapes every excluded range. Walk the interval.
        var next = low
        for r in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) where r.upperBound >= next {
            if r.lowerBound > next { return true }
            if r.upperBound >= high { return false }
            next = r.upperBound + 1
        }
        return next <= high
    }
}

/// One symbol of an alternative: a code point class or a reference to a rule.
public enum GrammarElement: Hashable, Sendable {
    /// One code point from the set.
    case chars(CodePointSet)
    /// Any expansion of rule `index`.
    case rule(Int)
}

/// A context-free grammar over Unicode code points, as llama.cpp's GBNF describes one: rules of
/// alternatives of element sequences. Repetitions and groups are already rewritten into helper
/// rules (`x*` becomes `r ::= x r | `), so the matcher only sees sequences and references.
public struct Grammar: Sendable {
    /// Rule names (helpers are named `parent-N`), index = rule id.
    public let names: [String]
    /// `rules[r][a]` is alternative `a` of rule `r`; an empty alternative matches nothing (ε).
    public let rules: [[[GrammarElement]]]
    /// The start rule (`root`).
    public let root: Int

    /// A grammar; throws when a rule is left-recursive (the matcher would expand it forever).
    public init(names: [String], rules: [[[GrammarElement]]], root: Int) throws {
        self.names = names
        self.rules = rules
        self.root = root
        try checkLeftRecursion()
    }

    /// Rules that can match the empty string.
    func nullableRules() -> [Bool] {
        var nullable = [Bool](repeating: false, count: rules.count)
        var changed = true
        while changed {
            changed = false
            for (r, alternatives) in rules.enumerated() where !nullable[r] {
                let yes = alternatives.contains { alt in
                    alt.allSatisfy { if case let .rule(s) = $0 { return nullable[s] } else { return false } }
                }
                if yes { nullable[r] = true; changed = true }
            }
        }
        return nullable
    }

    /// Left recursion (`a ::= a "x"`, also through nullable prefixes) would expand forever, so it is
    /// refused up front, naming the rule, as llama.cpp does.
    func checkLeftRecursion() throws {
        let nullable = nullableRules()
        // first[r]: rules that can start an expansion of r without consuming input.
        var first = [[Int]](repeating: [], count: rules.count)
        for (r, alternatives) in rules.enumerated() {
            for alt in alternatives {
                for element in alt {
                    guard case let .rule(s) = element else { break }
                    first[r].append(s)
                    if !nullable[s] { break }
                }
            }
        }
        // Depth-first search for a cycle.
        var colour = [UInt8](repeating: 0, count: rules.count)  // 0 new, 1 on path, 2 done
        func visit(_ r: Int) throws {
            colour[r] = 1
            for s in first[r] {
                if colour[s] == 1 { throw GrammarError("rule '\(names[s])' is left-recursive") }
                if colour[s] == 0 { try visit(s) }
            }
            colour[r] = 2
        }
        for r in rules.indices where colour[r] == 0 { try visit(r) }
    }
}

/// A grammar or schema that cannot be used, with the reason (and the position for GBNF text).
public struct GrammarError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What is wrong.
    public let description: String
    /// An error with `description`.
    public init(_ description: String) { self.description = description }
}
