// TensorMath module
