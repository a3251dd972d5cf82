/// Placeholder (being written).
public enum TemplateValue: Sendable { case string(String) }
public struct ChatTemplate: Sendable {
    static let chatMLSource = ""
    init(source: String, globals: [String: TemplateValue]) throws {}
}
