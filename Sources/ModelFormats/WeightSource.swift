import TensorMath

/// Where a model's named tensors come from: a Hugging Face checkpoint directory or the dense
/// file of a packed expert store. Shapes are checked against what the model expects, and
/// every error names the file and the tensor.
public protocol WeightSource: AnyObject, Sendable {
    /// Whether a tensor of this name exists.
    func contains(_ name: String) -> Bool
    /// Tensor `name` as a `[rows, cols]` matrix, kept in its stored dtype (f16 is widened).
    func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix
    /// Tensor `name` as `count` float32 values (any shape with that many elements).
    func vector(_ name: String, count: Int) throws -> [Float]
}
