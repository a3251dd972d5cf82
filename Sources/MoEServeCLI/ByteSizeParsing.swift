import InferenceEngine

/// Parses a size for option `option` (`512MiB`, `4GiB`, `4G`, plain bytes), or fails with one
/// line naming the option.
func parseByteSize(_ text: String, option: String) throws -> Int {
    guard let bytes = parseByteSize(text) else {
        throw CommandError("\(option): expected a size such as 512MiB, 4GiB or 1048576, got '\(text)'")
    }
    return bytes
}
