import Foundation

/// The tokenizer of a GGUF file, rewritten as the Hugging Face `tokenizer.json` and
/// `tokenizer_config.json` the same model ships with, so the one tokenizer implementation
/// (`Tokenization`) encodes both identically.
///
/// From the metadata: `tokenizer.ggml.model` (`gpt2`: byte-level BPE), `tokens`, `merges`,
/// `token_type` (control tokens become special added tokens, user-defined ones plain added
/// tokens), `pre` (llama.cpp's pre-tokenizer name → the regular expression and normaliser the
/// Hugging Face tokenizer uses), `bos/eos/padding_token_id`, `add_bos_token`/`add_eos_token`
/// and `tokenizer.chat_template`.
public struct GGUFTokenizerFiles: Sendable {
    /// Contents of the equivalent `tokenizer.json`.
    public let tokenizerJSON: Data
    /// Contents of the equivalent `tokenizer_config.json`.
    public let tokenizerConfigJSON: Data

    /// llama.cpp pre-tokenizer names → (split regex or nil for GPT-2's built-in one, NFC normaliser).
    static let preTokenizers: [String: (String?, Bool)] = [
        "qwen2": (#"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#, true),
        "llama-bpe": (#"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#, false),
        "gpt-2": (nil, false),
        "olmo": (nil, false),
        "default": (nil, false),
    ]

    /// Builds the files from `metadata`; throws (naming `file`) for a tokenizer it cannot express.
    public init(metadata: [String: GGUFValue], file: String) throws {
        func error(_ message: String) -> ModelFormatError { ModelFormatError.file(file, message) }
        guard let model = metadata["tokenizer.ggml.model"]?.stringValue else { throw error("no tokenizer.ggml.model in the metadata") }
        guard model == "gpt2" else {
            throw error("tokenizer.ggml.model '\(model)' is not supported (only 'gpt2', byte-level BPE); use --tokens, or the model's tokenizer.json")
        }
        let pre = metadata["tokenizer.ggml.pre"]?.stringValue ?? "default"
        guard let (regex, nfc) = Self.preTokenizers[pre] else {
            throw error("tokenizer.ggml.pre '\(pre)' is not supported (known: \(Self.preTokenizers.keys.sorted().joined(separator: ", ")))")
        }
        guard let tokens = metadata["tokenizer.ggml.tokens"]?.arrayValue?.compactMap(\.stringValue), !tokens.isEmpty else {
            throw error("tokenizer.ggml.tokens is missing or not strings")
        }
        let types = metadata["tokenizer.ggml.token_type"]?.arrayValue?.map { $0.intValue ?? 1 } ?? []
        let merges = metadata["tokenizer.ggml.merges"]?.arrayValue?.compactMap(\.stringValue) ?? []

        var vocab: [String: Int] = [:]
        var added: [[String: Any]] = []
        for (id, token) in tokens.enumerated() {
            let type = id < types.count ? types[id] : 1
            // 3 control, 4 user-defined: matched before the model, as added tokens; 5 unused.
            if type == 3 || type == 4 {
                added.append(["id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": type == 3])
            } else if type != 5, vocab[token] == nil {
                vocab[token] = id
            }
        }
        var preTokenizer: [String: Any] = ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex == nil]
        if let regex {
            preTokenizer = ["type": "Sequence", "pretokenizers": [
                ["type": "Split", "pattern": ["Regex": regex], "behavior": "Isolated", "invert": false],
                ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false],
            ]]
        }
        func token(_ key: String) -> String? {
            metadata["tokenizer.ggml.\(key)_token_id"]?.intValue.flatMap { $0 >= 0 && $0 < tokens.count ? tokens[$0] : nil }
        }
        let addBOS = metadata["tokenizer.ggml.add_bos_token"]?.boolValue ?? false
        let addEOS = metadata["tokenizer.ggml.add_eos_token"]?.boolValue ?? false
        var json: [String: Any] = [
            "version": "1.0",
            "added_tokens": added,
            "pre_tokenizer": preTokenizer,
            "decoder": ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true],
            "model": ["type": "BPE", "vocab": vocab, "merges": merges, "byte_fallback": false, "ignore_merges": false] as [String: Any],
        ]
        if nfc { json["normalizer"] = ["type": "NFC"] }
        var single: [[String: Any]] = [["Sequence": ["id": "A", "type_id": 0]]]
        var specials: [String: Any] = [:]
        if addBOS, let bos = token("bos"), let id = metadata["tokenizer.ggml.bos_token_id"]?.intValue {
            single.insert(["SpecialToken": ["id": bos, "type_id": 0]], at: 0)
            specials[bos] = ["id": bos, "ids": [id], "tokens": [bos]]
        }
        if addEOS, let eos = token("eos"), let id = metadata["tokenizer.ggml.eos_token_id"]?.intValue {
            single.append(["SpecialToken": ["id": eos, "type_id": 0]])
            specials[eos] = ["id": eos, "ids": [id], "tokens": [eos]]
        }
        if !specials.isEmpty { json["post_processor"] = ["type": "TemplateProcessing", "single": single, "special_tokens": specials] }

        var config: [String: Any] = ["add_bos_token": addBOS, "add_eos_token": addEOS]
        config["bos_token"] = token("bos") ?? NSNull()
        if let eos = token("eos") { config["eos_token"] = eos }
        if let pad = token("padding") { config["pad_token"] = pad }
        if let unknown = token("unknown") { config["unk_token"] = unknown }
        if let template = metadata["tokenizer.chat_template"]?.stringValue { config["chat_template"] = template }
        tokenizerJSON = try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys])
        tokenizerConfigJSON = try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys])
    }
}
