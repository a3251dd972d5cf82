/// The rows of one sequence inside a step's token batch.
public struct SequenceSpan {
    /// The sequence's keys and values.
    public let cache: KVCache
    /// First row of the batch that belongs to this sequence.
    public let firstRow: Int
    /// Number of new tokens of this sequence in the batch.
    public let rowCount: Int
    /// Position of the first new token (the cache length before the step).
    public let startPosition: Int
}
