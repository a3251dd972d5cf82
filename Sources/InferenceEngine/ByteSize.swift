import Foundation

/// The one parser of sizes (`--memory-budget`, `--expert-cache`, `memory_budget`, `max_body_size`, …),
/// shared by the command line and the server configuration so that a spelling means the same
/// bytes everywhere.
///
/// Every unit is binary, as memory sizes are: `K` = `KB` = `KiB` = 1024 bytes, `M` = `MB` =
/// `MiB` = 1024², `G` = `GB` = `GiB` = 1024³, `T` = `TB` = `TiB` = 1024⁴; no unit (or `B`)
/// means bytes. Units are case-insensitive and may follow a space; the number may have a
/// fraction (`1.5GiB`), rounded down to whole bytes.
public enum ByteSize {
    /// Multipliers by lower-cased unit.
    private static let multipliers: [String: Int] = [
        "": 1, "b": 1,
        "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
        "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
        "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
        "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
    ]

    /// Parses `text`, or throws a `ByteSizeError` saying why (not a size, unknown unit,
    /// negative, too large for a 64-bit count).
    public static func parse(_ text: String) throws -> Int {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("-") { throw ByteSizeError(text, "a size cannot be negative") }
        let number = trimmed.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
        guard !number.isEmpty else { throw ByteSizeError(text, "expected a number of bytes with an optional unit") }
        let unitText = trimmed.dropFirst(number.count).trimmingCharacters(in: .whitespaces)
        guard let multiplier = multipliers[unitText.lowercased()] else {
            throw ByteSizeError(text, "unknown unit '\(unitText)' (use B, K/KB/KiB, M/MB/MiB, G/GB/GiB or T/TB/TiB; all binary)")
        }
        if let whole = Int(number) {
            // Exact in integers, so that 8EiB - 1 style values do not round through Double.
            let (bytes, overflow) = whole.multipliedReportingOverflow(by: multiplier)
            guard !overflow else { throw ByteSizeError(text, "too large") }
            return bytes
        }
        guard let value = Double(number), value.isFinite else {
            throw ByteSizeError(text, "expected a number of bytes with an optional unit")
        }
        let bytes = value * Double(multiplier)
        // 2^63 is the first Double that does not fit in Int.
        guard bytes < 0x1p63 else { throw ByteSizeError(text, "too large") }
        return Int(bytes)
    }
}

/// A size that did not parse; one line naming the text and the reason.
public struct ByteSizeError: Error, CustomStringConvertible, Sendable {
    /// The text given.
    public let text: String
    /// Why it is not a size.
    public let reason: String
    public init(_ text: String, _ reason: String) {
        self.text = text
        self.reason = reason
    }
    public var description: String { "'\(text)' is not a size: \(reason) (e.g. 512MiB, 4GiB, 4G or 1048576)" }
}

/// Parses a size (`ByteSize.parse`), or nil when `text` is not one.
public func parseByteSize(_ text: String) -> Int? {
    try? ByteSize.parse(text)
}
