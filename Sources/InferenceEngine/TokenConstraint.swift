/// A per-sequence restriction on which tokens may come next (grammar-constrained decoding). The
/// engine asks it for a mask before each sample of its sequence and tells it the token chosen;
/// sampling, penalties and stop strings are otherwise unchanged. Used only by the engine thread.
public protocol TokenConstraint: AnyObject {
    /// Sets the logits of tokens that may not come next to -infinity; false when none may.
    func constrain(_ logits: inout [Float]) -> Bool
    /// Records the token chosen for this position.
    func accept(_ token: Int)
    /// Whether nothing more may follow (a grammar's sentence is complete): the sequence stops.
    var isComplete: Bool { get }
}

/// Makes a fresh `TokenConstraint` for each sequence of a request (each of `n` choices has its own).
public struct TokenConstraintFactory: Sendable {
    /// Creates one sequence's constraint.
    public let make: @Sendable () -> any TokenConstraint
    /// A factory calling `make`.
    public init(_ make: @escaping @Sendable () -> any TokenConstraint) { self.make = make }
}
