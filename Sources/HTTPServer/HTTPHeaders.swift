/// Header fields in arrival order; names compare case-insensitively as RFC 9110 says.
public struct HTTPHeaders: Sendable, Sequence {
    /// The fields as received or to be sent.
    public private(set) var fields: [(name: String, value: String)] = []

    /// An empty header list.
    public init() {}

    /// Headers from name/value pairs.
    public init(_ pairs: [(String, String)]) { fields = pairs.map { (name: $0.0, value: $0.1) } }

    /// Appends a field (repeated names are allowed, as for `Set-Cookie`).
    public mutating func add(_ name: String, _ value: String) { fields.append((name: name, value: value)) }

    /// Replaces every field named `name` with one field.
    public mutating func replace(_ name: String, _ value: String) {
        fields.removeAll { $0.name.lowercased() == name.lowercased() }
        fields.append((name: name, value: value))
    }

    /// The first value of `name`, or nil.
    public subscript(name: String) -> String? {
        let lower = name.lowercased()
        return fields.first { $0.name.lowercased() == lower }?.value
    }

    /// Whether a field named `name` is present.
    public func contains(_ name: String) -> Bool { self[name] != nil }

    /// Iterates the fields in order.
    public func makeIterator() -> IndexingIterator<[(name: String, value: String)]> { fields.makeIterator() }
}
