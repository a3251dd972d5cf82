// libFuzzer target: the demo model's tokenizer on arbitrary input. The bytes are taken as text
// (invalid UTF-8 repaired as Swift does for any client string) and encoded with and without
// special tokens; the ids are decoded back, in one go and streamed. The same bytes, read as
// 16-bit numbers, are decoded as token ids, out-of-vocabulary ones included, in one go and streamed.
// Streaming must give exactly the one-go decoding, for valid and hostile ids alike.
// Built only with MOE_FUZZ=1 (see scripts/fuzz.sh).
import Foundation
import FuzzSupport
import Tokenization

/// `DemoModel/` of this checkout, or `MOE_FUZZ_MODEL` when set.
let modelDirectory: URL = {
    if let dir = ProcessInfo.processInfo.environment["MOE_FUZZ_MODEL"] { return URL(fileURLWithPath: dir) }
    return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("DemoModel")
}()

let tokenizer: Tokenizer = {
    do { return try Tokenizer.load(directory: modelDirectory) } catch {
        fatalError("cannot load the tokenizer from \(modelDirectory.path): \(error)")
    }
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTokenizer(_ input: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data = input else { return 0 }
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let text = String(decoding: bytes, as: UTF8.self)
    for special in [false, true] {
        let ids = tokenizer.encode(text, addSpecialTokens: special)
        for id in ids where !(0..<tokenizer.vocabularySize).contains(id) {
            fatalError("encode produced id \(id) outside the vocabulary of \(tokenizer.vocabularySize)")
        }
        let decoded = tokenizer.decode(ids, skipSpecialTokens: special)
        if !special, !decoded.isEmpty, decoded != text, ids.count > 0, text.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value < 0x7F }) {
            // Printable ASCII without special-token text must round-trip exactly.
            if !text.contains("<") { fatalError("round trip changed \(text.debugDescription) into \(decoded.debugDescription)") }
        }
        checkStreaming(ids, skipSpecialTokens: special)
    }
    // Arbitrary ids, including ones outside the vocabulary (a client's /detokenize is validated
    // before it gets here, but the tokenizer must not trap on them).
    var ids: [Int] = []
    var i = 0
    while i + 1 < size {
        ids.append((Int(data[i]) << 8 | Int(data[i + 1])) % (tokenizer.vocabularySize + 16) - 8)
        i += 2
    }
    checkStreaming(ids, skipSpecialTokens: false)
    checkStreaming(ids, skipSpecialTokens: true)
    return 0
}

/// Streams `ids` through `StreamingDetokenizer`: the pieces must add up to `decode(ids)` byte for byte.
func checkStreaming(_ ids: [Int], skipSpecialTokens: Bool) {
    let decoded = tokenizer.decode(ids, skipSpecialTokens: skipSpecialTokens)
    var stream = StreamingDetokenizer(tokenizer: tokenizer, skipSpecialTokens: skipSpecialTokens)
    var streamed: [UInt8] = []
    for id in ids { streamed += stream.push(id).utf8 }
    streamed += stream.flush().utf8
    if streamed != Array(decoded.utf8) {
        fatalError("streamed \(String(decoding: streamed, as: UTF8.self).debugDescription) != decoded \(decoded.debugDescription) for \(ids)")
    }
}

/// The process entry point (see FuzzSupport/FuzzDriver.swift).
@_cdecl("FuzzTokenizer_main")
public func fuzzTokenizerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc: argc, argv: argv) { fuzzTokenizer($0, $1) }
}
