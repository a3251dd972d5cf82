/// Pre-tokenizers named as llama.cpp names them in a GGUF file's `tokenizer.ggml.pre`, for the
/// ones whose tokenizer.json is more than one `Split`: the GGUF reader writes
/// `{"type": "MoEServePreset", "name": …}` (not a Hugging Face type; only files written from GGUF
/// metadata carry it) and the published `Sequence` is rebuilt here from the same hand-matched
/// patterns a tokenizer.json selects, so a GGUF file and its model's tokenizer.json tokenize alike.
extension PreTokenizer {
    /// The llama.cpp names this file knows.
    static let presetNames = ["deepseek-llm", "deepseek-v3", "gpt-4o", "minimax-m2"]

    /// The published pre-tokenizer behind a llama.cpp name, or nil.
    static func preset(named name: String) -> PreTokenizer? {
        // Every published tokenizer.json below ends in a regex-free byte-level mapping.
        let byteLevel = PreTokenizer.byteLevel(addPrefixSpace: false, useRegex: false)
        func isolated(_ pattern: KnownSplitPattern) -> PreTokenizer { .split(.known(pattern), .isolated, invert: false) }
        switch name {
        case "deepseek-llm":
            // DeepSeek LLM, DeepSeek-V2/V2-Lite, DeepSeek-Coder-V2: five Splits, then every digit alone.
            return .sequence([isolated(.lineBreaks), isolated(.deepseekLLMLetters), isolated(.deepseekLLMPunctuation),
                              isolated(.trailingWhitespace), isolated(.deepseekLLMCJK), .digits(individual: true), byteLevel])
        case "deepseek-v3":
            // DeepSeek-V3/R1/V3.1 (and Kimi-K2's GGUFs name it too): numbers in threes, CJK/kana runs, the word pattern.
            return .sequence([isolated(.numberTriples), isolated(.cjkRuns), isolated(.deepseekV3), byteLevel])
        case "gpt-4o", "minimax-m2":
            // gpt-oss: tiktoken's o200k as its tokenizer.json spells it (kept here, not copied into the GGUF reader).
            // MiniMax-M2's tokenizer.json has the same pattern (a Split removed inverted, which keeps the
            // same pieces: the pattern covers every character); llama.cpp's `minimax-m2` runs it too.
            return .sequence([isolated(.o200k), byteLevel])
        default:
            return nil
        }
    }
}
