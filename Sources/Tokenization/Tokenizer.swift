import Foundation
import JSONCoding

/// A Hugging Face `tokenizer.json` tokenizer that encodes and decodes exactly as the `tokenizers`
/// library does, for the BPE styles used by Mixtral, Qwen2/Qwen3 and OLMoE checkpoints.
///
/// Load it with ``load(directory:)``; it is immutable afterwards (apart from an internal word cache
/// guarded by a lock) and safe to share between threads.
public final class Tokenizer: Sendable {
    let normalizer: Normalizer?
    let preTokenizer: PreTokenizer?
    let model: BPEModel
    let postProcessor: PostProcessor
    let decoder: Decoder?
    let addedTokens: [AddedToken]
    let rawMatcher: AddedTokenMatcher
    let normalizedMatcher: AddedTokenMatcher
    /// Token strings by id (added tokens override the model vocabulary); nil where no token exists.
    let idToToken: [String?]
    let addedById: [Int: AddedToken]
    let specialContents: Set<String>
    let addedIdByContent: [String: Int]

    /// The number of token ids: one more than the largest id of the model vocabulary or added tokens.
    public let vocabularySize: Int
    /// The beginning-of-sequence token (`bos_token` of tokenizer_config.json, else the first special
    /// token the post-processor adds), if any.
    public let bosTokenId: Int?
    /// Ids that end generation: `eos_token` of tokenizer_config.json, plus `<|im_end|>`,
    /// `<|endoftext|>`, `<|eot_id|>`, `<|end_of_text|>` and `</s>` when they are special tokens.
    public let eosTokenIds: Set<Int>
    /// The model's chat template, or the built-in ChatML template when it has none.
    public let chatTemplate: ChatTemplate
    /// Whether the decoder needs whole runs of `<0xXX>` tokens before it can decode them.
    let decoderHasByteFallback: Bool

    /// Loads `tokenizer.json` (and `tokenizer_config.json` if present) from `directory`; a
    /// `chat_template.jinja` beside them (how gpt-oss and newer checkpoints ship their template)
    /// is the chat template, as transformers takes it.
    ///
    /// - Throws: ``TokenizerError`` naming the file and the component that is missing or unsupported.
    public static func load(directory: URL) throws -> Tokenizer {
        let tokenizerURL = directory.appendingPathComponent("tokenizer.json")
        guard let data = try? Data(contentsOf: tokenizerURL) else {
            throw TokenizerError(file: tokenizerURL.path, "cannot read the file")
        }
        let configURL = directory.appendingPathComponent("tokenizer_config.json")
        var configData: Data? = nil
        if FileManager.default.fileExists(atPath: configURL.path) {
            guard let d = try? Data(contentsOf: configURL) else {
                throw TokenizerError(file: configURL.path, "cannot read the file")
            }
            configData = d
        }
        let templateURL = directory.appendingPathComponent("chat_template.jinja")
        var templateSource: String? = nil
        if FileManager.default.fileExists(atPath: templateURL.path) {
            guard let text = try? String(contentsOf: templateURL, encoding: .utf8) else {
                throw TokenizerError(file: templateURL.path, "cannot read the file as UTF-8")
            }
            templateSource = text
        }
        return try Tokenizer(
            tokenizerJSON: data, tokenizerConfigJSON: configData,
            tokenizerFile: tokenizerURL.path, configFile: configURL.path, chatTemplateSource: templateSource)
    }

    /// Builds a tokenizer from the contents of `tokenizer.json` and, optionally, `tokenizer_config.json`.
    public init(
        tokenizerJSON: Data, tokenizerConfigJSON: Data? = nil,
        tokenizerFile: String = "tokenizer.json", configFile: String = "tokenizer_config.json",
        chatTemplateSource: String? = nil
    ) throws {
        let file = tokenizerFile
        let parsed: JSON
        do {
            parsed = try JSON.parse([UInt8](tokenizerJSON), options: .lenient)
        } catch let error as JSONParseError {
            throw TokenizerError(file: file, error.description)
        }
        let root = try JSONObject(parsed, file: file, path: "$")

        // `truncation` and `padding` are ignored, as `transformers` resets them on the backend tokenizer
        // unless a call asks for them.
        let modelJSON = try root.object("model")
        let modelType = modelJSON.optionalString("type") ?? "BPE"
        guard modelType == "BPE" else {
            throw TokenizerError(file: file, "unsupported model type \"\(modelType)\" at $.model (only BPE)")
        }
        model = try BPEModel(modelJSON)
        normalizer = try root.optionalObject("normalizer").map(Normalizer.parse)
        preTokenizer = try root.optionalObject("pre_tokenizer").map(PreTokenizer.parse)
        postProcessor = try root.optionalObject("post_processor").map(PostProcessor.parse) ?? PostProcessor()
        decoder = try root.optionalObject("decoder").map(Decoder.parse)
        decoderHasByteFallback = decoder?.hasByteFallback ?? false

        var added: [AddedToken] = []
        if let list = root.raw("added_tokens")?.arrayValue {
            for (i, item) in list.enumerated() {
                added.append(try AddedToken(JSONObject(item, file: file, path: "$.added_tokens[\(i)]")))
            }
        }
        addedTokens = added
        let rawTokens = added.filter { !$0.normalized }
        let normTokens = added.filter { $0.normalized }
        rawMatcher = AddedTokenMatcher(tokens: rawTokens, patterns: rawTokens.map(\.content))
        let norm = normalizer
        normalizedMatcher = AddedTokenMatcher(
            tokens: normTokens, patterns: normTokens.map { norm?.apply($0.content) ?? $0.content })

        var maxId = -1
        for id in model.idToToken.keys { maxId = max(maxId, id) }
        for t in added { maxId = max(maxId, t.id) }
        var table = [String?](repeating: nil, count: maxId + 1)
        for (id, token) in model.idToToken { table[id] = token }
        var byId: [Int: AddedToken] = [:]
        for t in added {
            table[t.id] = t.content
            byId[t.id] = t
        }
        idToToken = table
        addedById = byId
        specialContents = Set(added.filter(\.special).map(\.content))
        vocabularySize = maxId + 1

        // tokenizer_config.json: bos/eos tokens and the chat template.
        var config = JSON.object([])
        if let configData = tokenizerConfigJSON {
            do {
                let c = try JSON.parse([UInt8](configData), options: .lenient)
                guard case .object = c else { throw TokenizerError("expected a JSON object") }
                config = c
            } catch let error as JSONParseError {
                throw TokenizerError(file: configFile, error.description)
            } catch let error as TokenizerError {
                throw TokenizerError(file: configFile, error.message)
            }
        }
        func tokenContent(_ key: String) -> String? {
            if let s = config[key]?.stringValue { return s }
            return config[key]?["content"]?.stringValue
        }
        var addedIdByContent: [String: Int] = [:]
        for t in added { addedIdByContent[t.content] = t.id }
        self.addedIdByContent = addedIdByContent
        let vocab = model.vocab
        func lookup(_ token: String) -> Int? { addedIdByContent[token] ?? vocab[token] }

        let bosToken = tokenContent("bos_token")
        let eosToken = tokenContent("eos_token")
        bosTokenId = bosToken.flatMap(lookup) ?? (tokenizerConfigJSON == nil ? postProcessor.prefix.first : nil)
        var eos = Set<Int>()
        if let e = eosToken.flatMap(lookup) { eos.insert(e) }
        // `<|return|>` and `<|call|>` end gpt-oss's (harmony) final and tool-call turns.
        for name in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<|return|>", "<|call|>"] {
            if let t = added.first(where: { $0.content == name && $0.special }) { eos.insert(t.id) }
        }
        eosTokenIds = eos

        var templateSource: String? = chatTemplateSource
        if templateSource != nil {
            // chat_template.jinja wins over tokenizer_config.json's chat_template.
        } else if let s = config["chat_template"]?.stringValue {
            templateSource = s
        } else if let list = config["chat_template"]?.arrayValue {
            templateSource = (list.first { $0["name"]?.stringValue == "default" } ?? list.first)?["template"]?.stringValue
        }
        var globals: [String: TemplateValue] = [:]
        globals["bos_token"] = .string(bosToken ?? "")
        globals["eos_token"] = .string(eosToken ?? "")
        for key in ["unk_token", "pad_token"] {
            if let t = tokenContent(key) { globals[key] = .string(t) }
        }
        if let templateSource {
            do {
                chatTemplate = try ChatTemplate(source: templateSource, globals: globals)
            } catch let error as TokenizerError {
                throw TokenizerError(file: configFile, "chat_template: \(error.message)")
            }
        } else {
            chatTemplate = try ChatTemplate(source: ChatTemplate.chatMLSource, globals: globals)
        }
    }

    /// The id of `token` (added tokens first, then the model vocabulary).
    public func tokenId(for token: String) -> Int? {
        addedIdByContent[token] ?? model.vocab[token]
    }

    /// The token string of `id`, if any.
    public func token(for id: Int) -> String? {
        guard id >= 0 && id < idToToken.count else { return nil }
        return idToToken[id]
    }

    /// Encodes `text` into token ids, adding the post-processor's special tokens when `addSpecialTokens`.
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] {
        var ids: [Int] = []
        ids.reserveCapacity(text.utf8.count / 3 + 4)
        if addSpecialTokens { ids.append(contentsOf: postProcessor.prefix) }
        var scalars: [Unicode.Scalar] = []
        scalars.reserveCapacity(text.utf8.count)
        for s in text.unicodeScalars { scalars.append(s) }
        for segment in rawMatcher.segments(scalars, range: 0..<scalars.count) {
            switch segment {
            case .token(let id): ids.append(id)
            case .text(let range): encodeNormalizing(scalars, range, atStart: range.lowerBound == 0, into: &ids)
            }
        }
        if addSpecialTokens { ids.append(contentsOf: postProcessor.suffix) }
        return ids
    }

    private func encodeNormalizing(
        _ scalars: [Unicode.Scalar], _ range: Range<Int>, atStart: Bool, into ids: inout [Int]
    ) {
        var text = scalars
        var textRange = range
        if let normalizer, !normalizer.isIdentity(on: scalars[range]) {
            text = normalizer.apply(scalars[range])
            textRange = 0..<text.count
        }
        for segment in normalizedMatcher.segments(text, range: textRange) {
            switch segment {
            case .token(let id): ids.append(id)
            case .text(let r): encodeWords(text, r, atStart: atStart && r.lowerBound == textRange.lowerBound, into: &ids)
            }
        }
    }

    private func encodeWords(_ scalars: [Unicode.Scalar], _ range: Range<Int>, atStart: Bool, into ids: inout [Int]) {
        if range.isEmpty { return }  // `tokenizers` never pre-tokenizes an empty segment
        let pieces = Pieces(scalars: scalars, ranges: [range])
        var words = preTokenizer?.apply(pieces, atStart: atStart) ?? pieces
        if model.splittableAtSpaceMarker {
            // Exact (see `splittableAtSpaceMarker`): cut words before each run of "▁" so they are short
            // and cacheable, as SentencePiece-style tokenizers have no (or a non-splitting) pre-tokenizer.
            var ranges: [Range<Int>] = []
            ranges.reserveCapacity(words.ranges.count)
            for r in words.ranges {
                var start = r.lowerBound
                for k in r where k > start && words.scalars[k] == "\u{2581}" && words.scalars[k - 1] != "\u{2581}" {
                    ranges.append(start..<k)
                    start = k
                }
                ranges.append(start..<r.upperBound)
            }
            words.ranges = ranges
        }
        for r in words.ranges {
            model.tokenize(words.scalars[r], into: &ids)
        }
    }

    /// Decodes `ids` into text. Unknown ids are skipped; special tokens too when `skipSpecialTokens`.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        var tokens: [String] = []
        tokens.reserveCapacity(ids.count)
        for id in ids {
            guard let t = token(for: id) else { continue }
            if skipSpecialTokens && specialContents.contains(t) { continue }
            tokens.append(t)
        }
        guard let decoder else { return tokens.joined(separator: " ") }
        return decoder.decodeChain(tokens).joined()
    }

    /// Whether `id` is a `<0xXX>` byte token that a `ByteFallback` decoder may still join with the next one.
    func isPendingByte(_ id: Int) -> Bool {
        guard decoderHasByteFallback, let t = token(for: id) else { return false }
        return Decoder.byteFallbackValue(t) != nil
    }

    /// Whether `decode` leaves `id` out entirely: an unknown id, or a special token when skipping them.
    func decodesToNothing(_ id: Int, skipSpecialTokens: Bool) -> Bool {
        guard let t = token(for: id) else { return true }
        return skipSpecialTokens && specialContents.contains(t)
    }

    /// Whether the decoder is `ByteLevel` alone, so that the text of any ids is the UTF-8 decoding of
    /// their bytes laid end to end (see `appendByteLevelBytes`).
    var decodesByteLevelOnly: Bool { decoder?.byteSource == .byteLevel }

    /// Appends the bytes a `ByteLevel` decoder makes of `id` (nothing for an unknown id).
    func appendByteLevelBytes(of id: Int, to bytes: inout [UInt8]) {
        guard let t = token(for: id) else { return }
        Decoder.appendByteLevelBytes(of: t, to: &bytes)
    }

    /// Whether `decode(ids)` may end inside a character that later ids could still complete, so that
    /// its trailing U+FFFD is only provisional. A `ByteFallback` decoder knows the bytes behind its
    /// `<0xXX>` runs: only a valid but unfinished UTF-8 sequence (at most 3 bytes, so the last 4 decide)
    /// can still change; any other trailing U+FFFD, from an invalid byte or a real U+FFFD in the text,
    /// is final, and so is the text of a decoder without byte tokens. Chains whose bytes this does not
    /// follow answer true (provisional).
    func mayEndInsideCharacter(_ ids: ArraySlice<Int>, skipSpecialTokens: Bool) -> Bool {
        switch decoder?.byteSource ?? .text {
        case .text: return false
        case .unknown, .byteLevel: return true
        case .byteFallback: break
        }
        var tail: [UInt8] = []
        for id in ids.reversed() where tail.count < 4 {
            if decodesToNothing(id, skipSpecialTokens: skipSpecialTokens) { continue }
            // Whole characters: only a `<0xXX>` run after them can be unfinished.
            guard let t = token(for: id), let b = Decoder.byteFallbackValue(t) else { break }
            tail.insert(b, at: 0)
        }
        return Decoder.endsInUnfinishedUTF8(tail[...])
    }
}

extension Normalizer {
    /// Whether normalizing `scalars` is known to leave them unchanged (a fast path, never wrong).
    func isIdentity(on scalars: ArraySlice<Unicode.Scalar>) -> Bool {
        switch self {
        case .nfc: return !scalars.contains { $0.value >= 0x300 }
        case .nfkc: return !scalars.contains { $0.value >= 0xA0 }
        case .sequence(let items): return items.allSatisfy { $0.isIdentity(on: scalars) }
        default: return false
        }
    }
}
