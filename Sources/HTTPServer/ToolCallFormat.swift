import Foundation

/// How a model family writes a tool call in its replies, chosen from its chat template (the
/// template that renders past calls is the one the model was trained to write them with).
///
/// - `hermes` (Qwen3, and the system-prompt fallback for templates without tools):
///   `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`
/// - `deepSeekV3`: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{...}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>`
/// - `deepSeekV31` (V3.1 and later): `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{...}<｜tool▁call▁end｜><｜tool▁calls▁end｜>`
/// - `glm45`: `<tool_call>f\n<arg_key>k</arg_key>\n<arg_value>v</arg_value>\n</tool_call>`, a string
///   value as it is, any other as JSON
/// - `harmony` (gpt-oss): a `commentary` message addressed `to=functions.f`, e.g.
///   `<|channel|>commentary to=functions.f <|constrain|>json<|message|>{...}<|call|>`; only the
///   `final` channel's text is content (`analysis` is the model's reasoning).
public enum ToolCallFormat: String, Sendable, CaseIterable {
    case hermes, deepSeekV3, deepSeekV31, glm45, harmony

    /// The format a chat template's own rendering of `tool_calls` uses (hermes when it has none).
    public static func detect(templateSource source: String) -> ToolCallFormat {
        if source.contains("<｜tool▁call▁begin｜>") { return source.contains("```json") ? .deepSeekV3 : .deepSeekV31 }
        if source.contains("<arg_key>") { return .glm45 }
        if source.contains("to=functions") || source.contains("<|call|>") { return .harmony }
        return .hermes
    }

    static let deepSeekCallsBegin = "<｜tool▁calls▁begin｜>", deepSeekCallsEnd = "<｜tool▁calls▁end｜>"
    static let deepSeekCallBegin = "<｜tool▁call▁begin｜>", deepSeekCallEnd = "<｜tool▁call▁end｜>", deepSeekSep = "<｜tool▁sep｜>"

    /// The tags around one call (harmony is parsed by `HarmonyToolStream` instead).
    var tags: (open: String, close: String) {
        switch self {
        case .hermes, .glm45: return ("<tool_call>", "</tool_call>")
        case .deepSeekV3, .deepSeekV31: return (Self.deepSeekCallBegin, Self.deepSeekCallEnd)
        case .harmony: return ("to=functions.", "<|call|>")
        }
    }

    /// Markers around a group of calls that are neither content nor part of a call.
    var wrappers: [String] {
        switch self {
        case .deepSeekV3, .deepSeekV31: return [Self.deepSeekCallsBegin, Self.deepSeekCallsEnd]
        default: return []
        }
    }

    /// The function name and arguments (a JSON object) of one call's text between the tags, or nil.
    func parseBody(_ body: String) -> (name: String, arguments: JSON)? {
        switch self {
        case .hermes:
            let trimmed = body.trimmingCharacters(in: .whitespacesAndNewlines)
            guard let value = try? JSON.parse(Array(trimmed.utf8)), let name = value["name"]?.stringValue else { return nil }
            var arguments = value["arguments"] ?? value["parameters"] ?? .object([])
            if let text = arguments.stringValue, let parsed = try? JSON.parse(Array(text.utf8)) { arguments = parsed }
            return (name, arguments)
        case .deepSeekV3, .deepSeekV31:
            // V3: "function<sep>name\n```json\n{...}\n```"; V3.1: "name<sep>{...}". Either is read.
            guard let sep = body.range(of: Self.deepSeekSep) else { return nil }
            let head = body[..<sep.lowerBound].trimmingCharacters(in: .whitespacesAndNewlines)
            var rest = String(body[sep.upperBound...])
            let name: String
            if let fence = rest.range(of: "```json") {
                name = rest[..<fence.lowerBound].trimmingCharacters(in: .whitespacesAndNewlines)
                rest = String(rest[fence.upperBound...])
                if let end = rest.range(of: "```", options: .backwards) { rest = String(rest[..<end.lowerBound]) }
            } else {
                name = head
            }
            guard !name.isEmpty, let arguments = try? JSON.parse(Array(rest.trimmingCharacters(in: .whitespacesAndNewlines).utf8)),
                  case .object = arguments else { return nil }
            return (name, arguments)
        case .glm45:
            // A forced call is written in the Hermes format (see `forcedCall`).
            if body.trimmingCharacters(in: .whitespacesAndNewlines).hasPrefix("{") { return ToolCallFormat.hermes.parseBody(body) }
            var text = Substring(body)
            let nameEnd = text.range(of: "<arg_key>")?.lowerBound ?? text.endIndex
            let name = text[..<nameEnd].trimmingCharacters(in: .whitespacesAndNewlines)
            guard !name.isEmpty, !name.contains("<") else { return nil }
            text = text[nameEnd...]
            var members: [(String, JSON)] = []
            while let keyOpen = text.range(of: "<arg_key>") {
                guard let keyClose = text.range(of: "</arg_key>", range: keyOpen.upperBound..<text.endIndex),
                      let valueOpen = text.range(of: "<arg_value>", range: keyClose.upperBound..<text.endIndex),
                      let valueClose = text.range(of: "</arg_value>", range: valueOpen.upperBound..<text.endIndex) else { return nil }
                let key = String(text[keyOpen.upperBound..<keyClose.lowerBound])
                let raw = String(text[valueOpen.upperBound..<valueClose.lowerBound])
                // The template writes strings as they are and everything else as JSON: a value
                // that parses as JSON other than a string is that value, else it is the text.
                let value: JSON
                if let parsed = try? JSON.parse(Array(raw.utf8)), parsed.stringValue == nil { value = parsed } else { value = .string(raw) }
                members.append((key, value))
                text = text[valueClose.upperBound...]
            }
            guard text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { return nil }
            return (name, .object(members))
        case .harmony:
            // "name<header...><|message|>{...}" (the text after "to=functions.").
            guard let message = body.range(of: "<|message|>") else { return nil }
            let header = body[..<message.lowerBound]
            let name = String(header.prefix { !$0.isWhitespace && $0 != "<" })
            guard !name.isEmpty,
                  let arguments = try? JSON.parse(Array(body[message.upperBound...].trimmingCharacters(in: .whitespacesAndNewlines).utf8)),
                  case .object = arguments else { return nil }
            return (name, arguments)
        }
    }

    /// The text around a forced call's JSON arguments (the grammar `tool_choice` imposes); nil
    /// for GLM-4.5, whose arguments are key/value tags rather than one JSON document (forced
    /// calls use the Hermes format there).
    func forcedCall(name: String) -> (before: String, after: String)? {
        switch self {
        case .hermes, .glm45:
            return ("<tool_call>\n{\"name\": \(JSON.string(name).serialized()), \"arguments\": ", "}\n</tool_call>")
        case .deepSeekV3:
            return (Self.deepSeekCallsBegin + Self.deepSeekCallBegin + "function" + Self.deepSeekSep + name + "\n```json\n",
                    "\n```" + Self.deepSeekCallEnd + Self.deepSeekCallsEnd)
        case .deepSeekV31:
            return (Self.deepSeekCallsBegin + Self.deepSeekCallBegin + name + Self.deepSeekSep, Self.deepSeekCallEnd + Self.deepSeekCallsEnd)
        case .harmony:
            return ("<|channel|>commentary to=functions.\(name) <|constrain|>json<|message|>", "<|call|>")
        }
    }
}
