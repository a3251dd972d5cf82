import Foundation

/// The `tokenizer.ggml.*` metadata of a Hugging Face byte-level BPE tokenizer (`tokenizer.json`
/// and `tokenizer_config.json`), as llama.cpp's converter writes it: model `gpt2`, the
/// pre-tokenizer's llama.cpp name (by its split pattern), tokens in id order (ids the
/// vocabulary lacks as `[PADn]`, type unused), token types (special added tokens control,
/// other added tokens user-defined), merges as `"a b"`, the special ids and `add_bos/eos_token`
/// the config names, and the chat template. The inverse of `GGUFTokenizerFiles`.
public enum GGUFTokenizerMetadata {
    /// The pre-tokenizer names tried first when several share a pattern (glm4 uses Llama-3's).
    static let preferredNames = ["qwen2", "llama-bpe", "gpt-2"]

    /// The metadata for the tokenizer in `directory`, padded or cut to `vocabSize` tokens.
    public static func entries(directory: URL, vocabSize: Int) throws -> [(key: String, value: GGUFStreamWriter.Value)] {
        let file = directory.appendingPathComponent("tokenizer.json")
        func error(_ message: String) -> ModelFormatError { ModelFormatError.file(file.path, message) }
        guard let json = try JSONSerialization.jsonObject(with: Data(contentsOf: file)) as? [String: Any],
              let model = json["model"] as? [String: Any], model["type"] as? String == "BPE",
              let vocab = model["vocab"] as? [String: Int] else {
            throw error("not a BPE tokenizer.json (only byte-level BPE tokenizers are written to GGUF)")
        }
        let pre = try preTokenizerName(json["pre_tokenizer"], error: error)
        var tokens = [String?](repeating: nil, count: vocabSize)
        var types = [Int32](repeating: 1, count: vocabSize)
        for (token, id) in vocab where id >= 0 && id < vocabSize { tokens[id] = token }
        var specialIds: [String: Int] = [:]
        for case let added as [String: Any] in json["added_tokens"] as? [Any] ?? [] {
            guard let id = added["id"] as? Int, let content = added["content"] as? String, id >= 0, id < vocabSize else { continue }
            tokens[id] = content
            types[id] = (added["special"] as? Bool ?? false) ? 3 : 4
            specialIds[content] = id
        }
        for id in 0..<vocabSize where tokens[id] == nil { types[id] = 5 }
        let merges: [String] = (model["merges"] as? [Any] ?? []).compactMap { merge in
            if let text = merge as? String { return text }
            if let pair = merge as? [String], pair.count == 2 { return pair.joined(separator: " ") }
            return nil
        }
        var entries: [(key: String, value: GGUFStreamWriter.Value)] = [
            ("tokenizer.ggml.model", .string("gpt2")),
            ("tokenizer.ggml.pre", .string(pre)),
            ("tokenizer.ggml.tokens", .strings(tokens.enumerated().map { $1 ?? "[PAD\($0)]" })),
            ("tokenizer.ggml.token_type", .i32s(types)),
            ("tokenizer.ggml.merges", .strings(merges)),
        ]
        let configURL = directory.appendingPathComponent("tokenizer_config.json")
        let config = (try? JSONSerialization.jsonObject(with: Data(contentsOf: configURL))) as? [String: Any] ?? [:]
        func content(_ value: Any?) -> String? { value as? String ?? (value as? [String: Any])?["content"] as? String }
        for (key, name) in [("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")] {
            if let text = content(config[key]), let id = specialIds[text] ?? vocab[text], id < vocabSize {
                entries.append(("tokenizer.ggml.\(name)_token_id", .u32(UInt32(id))))
            }
        }
        for key in ["add_bos_token", "add_eos_token"] {
            if let flag = config[key] as? Bool { entries.append(("tokenizer.ggml.\(key)", .bool(flag))) }
        }
        if let template = config["chat_template"] as? String { entries.append(("tokenizer.chat_template", .string(template))) }
        return entries
    }

    /// llama.cpp's name for the pre-tokenizer: one Split pattern (then byte-level) that
    /// `GGUFTokenizerFiles` maps back to the same pattern, or GPT-2's built-in one.
    static func preTokenizerName(_ value: Any?, error: (String) -> ModelFormatError) throws -> String {
        guard let pre = value as? [String: Any] else { throw error("no pre_tokenizer") }
        if pre["type"] as? String == "ByteLevel", pre["use_regex"] as? Bool ?? true { return "gpt-2" }
        let steps = pre["pretokenizers"] as? [[String: Any]] ?? []
        guard pre["type"] as? String == "Sequence", steps.count == 2, steps[1]["type"] as? String == "ByteLevel",
              steps[0]["type"] as? String == "Split",
              let regex = (steps[0]["pattern"] as? [String: Any])?["Regex"] as? String else {
            throw error("the pre-tokenizer is not one Split pattern followed by ByteLevel; no llama.cpp name is known for it")
        }
        let names = preferredNames + GGUFTokenizerFiles.preTokenizers.keys.sorted().filter { !preferredNames.contains($0) }
        guard let name = names.first(where: { GGUFTokenizerFiles.preTokenizers[$0]?.0 == regex }) else {
            throw error("the Split pattern is not one of llama.cpp's known pre-tokenizers (\(names.joined(separator: ", ")))")
        }
        return name
    }
}
