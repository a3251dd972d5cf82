/// `Tokenizer.chatTemplate` is a `ChatTemplate` and loading errors are `TokenizerError`s, both from
/// ChatTemplates, so whoever imports Tokenization sees them.
@_exported import ChatTemplates
