import Foundation

/// Parses a size such as `512MiB`, `4GiB`, `4G`, `1.5GB` or plain bytes (binary multiples:
/// the contract treats K/M/G/T and KiB/MiB/GiB/TiB alike).
func parseByteSize(_ text: String, option: String) throws -> Int {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    let digits = trimmed.prefix { $0.isNumber || $0 == "." }
    let unit = trimmed.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased()
    let multipliers: [String: Double] = [
        "": 1, "b": 1,
        "k": 1024, "kb": 1024, "kib": 1024,
        "m": 1_048_576, "mb": 1_048_576, "mib": 1_048_576,
        "g": 1_073_741_824, "gb": 1_073_741_824, "gib": 1_073_741_824,
        "t": 1_099_511_627_776, "tb": 1_099_511_627_776, "tib": 1_099_511_627_776,
    ]
    guard let value = Double(digits), let multiplier = multipliers[unit], value >= 0 else {
        throw CommandError("\(option): expected a size such as 512MiB, 4GiB or 1048576, got '\(text)'")
    }
    return Int(value * multiplier)
}
