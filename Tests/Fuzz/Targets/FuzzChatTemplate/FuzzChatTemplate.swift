// libFuzzer target: the chat-template engine (lexer, parser, interpreter, filters). Input:
// template source, a 0 byte, then messages as `role\u{1}content` separated by 0x02. The
// template is parsed; when it parses, it is rendered with those messages (and with the demo
// model's real template for the same messages). Built only with MOE_FUZZ=1 (see scripts/fuzz.sh).
import Foundation
import FuzzSupport
import Tokenization

let demoTemplate: ChatTemplate = {
    let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("DemoModel/chat_template.jinja")
    guard let source = try? String(contentsOf: url, encoding: .utf8), let t = try? ChatTemplate(source: source) else {
        return ChatTemplate.chatML
    }
    return t
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzChatTemplate(_ input: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data = input else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let split = bytes.firstIndex(of: 0) ?? bytes.count
    let source = String(decoding: bytes[..<split], as: UTF8.self)
    var messages: [ChatMessage] = []
    if split < bytes.count {
        for part in bytes[(split + 1)...].split(separator: 2, omittingEmptySubsequences: false) {
            let fields = part.split(separator: 1, maxSplits: 1, omittingEmptySubsequences: false)
            let role = String(decoding: fields[0], as: UTF8.self)
            let content = fields.count > 1 ? String(decoding: fields[1], as: UTF8.self) : ""
            messages.append(ChatMessage(role: role, content: content))
        }
    }
    if let template = try? ChatTemplate(source: source, globals: ["bos_token": "<s>", "eos_token": "</s>"]) {
        _ = try? template.render(messages: messages, addGenerationPrompt: size % 2 == 0)
    }
    _ = try? demoTemplate.render(messages: messages, addGenerationPrompt: true)
    return 0
}

/// The process entry point (see FuzzSupport/FuzzDriver.swift).
@_cdecl("FuzzChatTemplate_main")
public func fuzzChatTemplateMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc: argc, argv: argv) { fuzzChatTemplate($0, $1) }
}
