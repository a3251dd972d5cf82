/// Names one routed expert: its MoE layer (the model's layer index) and its index within it.
public struct ExpertKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The model layer the expert belongs to.
    public var layer: Int
    /// The expert's index within its layer.
    public var expert: Int

    /// Names expert `expert` of layer `layer`.
    public init(layer: Int, expert: Int) {
        self.layer = layer
        self.expert = expert
    }

    /// Layer first, then expert: the order used to break ties so that every policy is
    /// deterministic (and the Python cross-check can reproduce it).
    public static func < (a: ExpertKey, b: ExpertKey) -> Bool {
        (a.layer, a.expert) < (b.layer, b.expert)
    }

    /// `L3/E17`.
    public var description: String { "L\(layer)/E\(expert)" }
}
