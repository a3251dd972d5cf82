/// Which characters a JSON string literal escapes beyond what JSON requires.
public enum JSONStringEscaping: Sendable {
    /// Exactly Python's `json.dumps(s, ensure_ascii=False)`: `"` `\` `\b` `\f` `\n` `\r` `\t`, other
    /// controls below U+0020 as `\u00xx`, everything else raw UTF-8. Chat templates' `tojson` needs
    /// this byte for byte.
    case minimal
    /// `minimal`, plus DEL and U+2028/U+2029 as `\u` escapes: those are legal JSON but break
    /// JavaScript that evaluates a line and terminals that print one, so HTTP responses, SSE events
    /// and command output use this.
    case lineSafe
}

extension JSON {
    /// Compact serialization (no whitespace), one line as SSE framing needs; strings `lineSafe`.
    public func serialized() -> String {
        var out = ""
        out.reserveCapacity(128)
        write(into: &out)
        return out
    }

    /// Compact serialization as UTF-8 bytes.
    public var bytes: [UInt8] { Array(serialized().utf8) }

    private func write(into out: inout String) {
        switch self {
        case .null: out += "null"
        case let .bool(b): out += b ? "true" : "false"
        case let .int(i): out += String(i)
        case let .double(d):
            // JSON has no NaN or infinity; null is what browsers' JSON.stringify emits.
            if d.isFinite {
                if d.rounded() == d && abs(d) < 1e15 { out += String(Int(d)) + ".0" } else { out += "\(d)" }
            } else { out += "null" }
        case let .string(s): JSON.appendQuoted(s, to: &out)
        case let .array(items):
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                item.write(into: &out)
            }
            out += "]"
        case let .object(members):
            out += "{"
            for (i, (key, value)) in members.enumerated() {
                if i > 0 { out += "," }
                JSON.appendQuoted(key, to: &out)
                out += ":"
                value.write(into: &out)
            }
            out += "}"
        }
    }

    /// `s` as a JSON string literal, quotes included.
    public static func quoted(_ s: String, escaping: JSONStringEscaping = .lineSafe) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count + 2)
        appendQuoted(s, to: &out, escaping: escaping)
        return out
    }

    /// Appends `s` as a JSON string literal, quotes included: the one JSON string escaper.
    public static func appendQuoted(_ s: String, to out: inout String, escaping: JSONStringEscaping = .lineSafe) {
        out += "\""
        // Most strings need no escape at all; 0xE2 leads U+2028/U+2029 in UTF-8.
        let clean = s.utf8.allSatisfy { b in
            b >= 0x20 && b != UInt8(ascii: "\"") && b != UInt8(ascii: "\\") && b != 0x7F && b != 0xE2
        }
        if clean {
            out += s
        } else {
            for scalar in s.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                case "\u{08}": out += "\\b"
                case "\u{0C}": out += "\\f"
                case "\u{7F}", "\u{2028}", "\u{2029}":
                    if escaping == .lineSafe { appendUnicodeEscape(scalar.value, to: &out) } else { out.unicodeScalars.append(scalar) }
                default:
                    if scalar.value < 0x20 { appendUnicodeEscape(scalar.value, to: &out) } else { out.unicodeScalars.append(scalar) }
                }
            }
        }
        out += "\""
    }

    /// `\u` and four lowercase hex digits, as Python writes them.
    private static func appendUnicodeEscape(_ value: UInt32, to out: inout String) {
        let hex = String(value, radix: 16)
        out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
    }
}
