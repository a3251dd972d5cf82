/// Hugging Face `tokenizer.json` tokenizers (issue 3).
public enum TokenizationModule {}
