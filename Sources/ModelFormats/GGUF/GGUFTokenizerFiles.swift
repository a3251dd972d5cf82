import Foundation

/// The tokenizer of a GGUF file, rewritten as the Hugging Face `tokenizer.json` and
/// `tokenizer_config.json` the same model ships with, so the one tokenizer implementation
/// (`Tokenization`) encodes both identically.
///
/// From the metadata: `tokenizer.ggml.model` (`gpt2`: byte-level BPE; `llama`: SentencePiece,
/// see `init(sentencePiece:error:)`), `tokens`, `merges` (or `scores`),
/// `token_type` (control tokens become special added tokens, user-defined ones plain added
/// tokens), `pre` (llama.cpp's pre-tokenizer name → the regular expression and normaliser the
/// Hugging Face tokenizer uses), `bos/eos/padding_token_id`, `add_bos_token`/`add_eos_token`
/// and `tokenizer.chat_template`.
public struct GGUFTokenizerFiles: Sendable {
    /// Contents of the equivalent `tokenizer.json`.
    public let tokenizerJSON: Data
    /// Contents of the equivalent `tokenizer_config.json`.
    public let tokenizerConfigJSON: Data

    /// Llama-3's (cl100k) pattern, which GLM-4 uses too.
    static let llama3Regex = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// llama.cpp pre-tokenizer names → (split regex or nil for GPT-2's built-in one, NFC normaliser).
    static let preTokenizers: [String: (String?, Bool)] = [
        "qwen2": (#"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#, true),
        "llama-bpe": (llama3Regex, false),
        // GLM-4/4.5 GGUFs: the same Llama-3 (cl100k) pattern.
        "glm4": (llama3Regex, false),
        "gpt-2": (nil, false),
        "olmo": (nil, false),
        "default": (nil, false),
    ]

    /// llama.cpp pre-tokenizer names whose published tokenizer.json is a `Sequence` of several
    /// Splits: written as `{"type": "MoEServePreset", "name": …}`, which the tokenizer rebuilds
    /// from the same hand-matched patterns (`PreTokenizerPresets.swift` in Tokenization).
    static let presetPreTokenizers: Set<String> = ["deepseek-llm", "deepseek-v3", "gpt-4o", "minimax-m2"]

    /// Builds the files from `metadata`; throws (naming `file`) for a tokenizer it cannot express.
    public init(metadata: [String: GGUFValue], file: String) throws {
        func error(_ message: String) -> ModelFormatError { ModelFormatError.file(file, message) }
        guard let model = metadata["tokenizer.ggml.model"]?.stringValue else { throw error("no tokenizer.ggml.model in the metadata") }
        switch model {
        case "gpt2": try self.init(byteLevelBPE: metadata, error: error)
        case "llama": try self.init(sentencePiece: metadata, error: error)
        default:
            throw error("tokenizer.ggml.model '\(model)' is not supported (only 'gpt2', byte-level BPE, and 'llama', SentencePiece); use --tokens, or the model's tokenizer.json")
        }
    }

    /// `tokenizer.ggml.model = gpt2`: byte-level BPE with merges.
    private init(byteLevelBPE metadata: [String: GGUFValue], error: (String) -> ModelFormatError) throws {
        let pre = metadata["tokenizer.ggml.pre"]?.stringValue ?? "default"
        let isPreset = Self.presetPreTokenizers.contains(pre)
        let entry: (String?, Bool)? = isPreset ? (nil, false) : Self.preTokenizers[pre]
        guard let (regex, nfc) = entry else {
            let known = (Array(Self.preTokenizers.keys) + Self.presetPreTokenizers).sorted()
            throw error("tokenizer.ggml.pre '\(pre)' is not supported (known: \(known.joined(separator: ", ")))")
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
        if isPreset {
            preTokenizer = ["type": "MoEServePreset", "name": pre]
        } else if let regex {
            preTokenizer = ["type": "Sequence", "pretokenizers": [
                ["type": "Split", "pattern": ["Regex": regex], "behavior": "Isolated", "invert": false],
                ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false],
            ]]
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
        try self.init(json: json, metadata: metadata, tokens: tokens, addBOS: addBOS, addEOS: addEOS)
    }

    /// `tokenizer.ggml.model = llama`: SentencePiece BPE as llama.cpp's SPM tokenizer runs it —
    /// spaces escaped to `▁`, a `▁` prepended to the text and after every special token when
    /// `add_space_prefix` (default true), then, repeatedly, the adjacent pair whose joined piece
    /// is in the vocabulary with the highest score is merged; what is left outside the vocabulary
    /// falls back to its bytes (`<0xNN>` tokens). The same as a Hugging Face BPE whose merge ranks
    /// follow the joined piece's score (how transformers converts a `tokenizer.model`), so the
    /// Hugging Face files are written with merges made from the scores: for every normal piece,
    /// each split into two pieces of the vocabulary, ranked by the piece's score (higher first),
    /// then by the ids of the two halves. Types: 1 normal, 2 unknown, 3 control (special added
    /// tokens), 4 user-defined (added tokens), 5 unused (left out), 6 byte.
    private init(sentencePiece metadata: [String: GGUFValue], error: (String) -> ModelFormatError) throws {
        guard let tokens = metadata["tokenizer.ggml.tokens"]?.arrayValue?.compactMap(\.stringValue), !tokens.isEmpty else {
            throw error("tokenizer.ggml.tokens is missing or not strings")
        }
        let types = metadata["tokenizer.ggml.token_type"]?.arrayValue?.map { $0.intValue ?? 1 } ?? []
        let scores = metadata["tokenizer.ggml.scores"]?.arrayValue?.map { Float($0.doubleValue ?? 0) } ?? []
        guard scores.count == tokens.count else {
            throw error("tokenizer.ggml.scores has \(scores.count) entries for \(tokens.count) tokens (a SentencePiece vocabulary needs one score per token)")
        }
        var vocab: [String: Int] = [:]
        var added: [[String: Any]] = []
        for (id, token) in tokens.enumerated() {
            let type = id < types.count ? types[id] : 1
            if type == 3 || type == 4 {
                added.append(["id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": type == 3])
            }
            if type != 5, vocab[token] == nil { vocab[token] = id }
        }
        // Merges from scores: (score of the joined piece, id of left, id of right, left, right).
        var candidates: [(Float, Int, Int, String, String)] = []
        for (id, token) in tokens.enumerated() where (id < types.count ? types[id] : 1) == 1 {
            let characters = Array(token)
            guard characters.count >= 2 else { continue }
            for split in 1..<characters.count {
                let left = String(characters[..<split]), right = String(characters[split...])
                guard let l = vocab[left], let r = vocab[right],
                      (l < types.count ? types[l] : 1) == 1, (r < types.count ? types[r] : 1) == 1 else { continue }
                candidates.append((scores[id], l, r, left, right))
            }
        }
        candidates.sort { a, b in a.0 != b.0 ? a.0 > b.0 : (a.1 != b.1 ? a.1 < b.1 : a.2 < b.2) }
        let merges = candidates.map { [$0.3, $0.4] }
        let spacePrefix = metadata["tokenizer.ggml.add_space_prefix"]?.boolValue ?? true
        var normalizers: [[String: Any]] = [["type": "Replace", "pattern": ["String": " "], "content": "\u{2581}"]]
        if spacePrefix { normalizers.insert(["type": "Prepend", "prepend": "\u{2581}"], at: 0) }
        var model: [String: Any] = ["type": "BPE", "vocab": vocab, "merges": merges, "byte_fallback": true, "fuse_unk": true,
                                    "ignore_merges": false]
        if let unknown = metadata["tokenizer.ggml.unknown_token_id"]?.intValue, unknown >= 0, unknown < tokens.count {
            model["unk_token"] = tokens[unknown]
        }
        var decoders: [[String: Any]] = [["type": "Replace", "pattern": ["String": "\u{2581}"], "content": " "],
                                         ["type": "ByteFallback"], ["type": "Fuse"]]
        if spacePrefix { decoders.append(["type": "Strip", "content": " ", "start": 1, "stop": 0]) }
        let json: [String: Any] = [
            "version": "1.0",
            "added_tokens": added,
            "normalizer": ["type": "Sequence", "normalizers": normalizers],
            "pre_tokenizer": NSNull(),
            "decoder": ["type": "Sequence", "decoders": decoders],
            "model": model,
        ]
        // llama.cpp's defaults for SentencePiece vocabularies: BOS added, EOS not.
        try self.init(json: json, metadata: metadata, tokens: tokens,
                      addBOS: metadata["tokenizer.ggml.add_bos_token"]?.boolValue ?? true,
                      addEOS: metadata["tokenizer.ggml.add_eos_token"]?.boolValue ?? false)
    }

    /// Adds the BOS/EOS post-processor to `json` and writes both files.
    private init(json: [String: Any], metadata: [String: GGUFValue], tokens: [String], addBOS: Bool, addEOS: Bool) throws {
        var json = json
        func token(_ key: String) -> String? {
            metadata["tokenizer.ggml.\(key)_token_id"]?.intValue.flatMap { $0 >= 0 && $0 < tokens.count ? tokens[$0] : nil }
        }
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
