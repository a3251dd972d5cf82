import InferenceEngine

/// Parses a size for option `option` with the one size parser (`ByteSize.parse`: `512MiB`,
/// `4GiB`, `4G`, plain bytes; every unit binary), or fails with one line naming the option.
func parseByteSize(_ text: String, option: String) throws -> Int {
    do { return try ByteSize.parse(text) } catch { throw CommandError("\(option): \(error)") }
}
