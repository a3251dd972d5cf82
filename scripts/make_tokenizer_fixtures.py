#!/usr/bin/env python3
"""Makes the tokenizer test fixtures under Tests/Fixtures/tokenizers/.

Trains small BPE tokenizers of the three styles MoE checkpoints use with Hugging Face `tokenizers`
and records what `tokenizers` itself answers for a few hundred strings, so that the Swift tests can
require exact, id-for-id and byte-for-byte agreement:

  qwen2    byte-level BPE, Split(Qwen2 regex) + ByteLevel(use_regex=false), NFC       (Qwen2, Qwen3)
  neox     byte-level BPE, ByteLevel(use_regex=true) i.e. the GPT-2 regex, NFC          (GPT-NeoX, OLMoE)
  mistral  SentencePiece-style BPE: Prepend("▁") + Replace(" ", "▁"), byte_fallback, fuse_unk,
           Replace/ByteFallback/Fuse/Strip decoders, "<s> $A" post-processor       (Mistral, Mixtral)
  mistral-metaspace  the same model with a Metaspace(prepend_scheme="first", split=false) pre-tokenizer
           instead of the normalizers (transformers' Llama converter with legacy=False)

Each style has a `*-heldout` twin trained with another seed on another slice of the corpus, with
variations the main fixtures do not have (Llama-3 digit groups with ignore_merges, add_prefix_space
with a BOS template, no byte fallback so unknown characters fuse into <unk>), and its own strings.

It also renders the chat templates in chat_templates/*.jinja (real templates of Mixtral-8x7B-Instruct,
Qwen2, Qwen2.5, Qwen3 and OLMoE-Instruct) with `transformers`' own chat-template renderer for several
conversations, into chat_templates/expected.json.

Usage: /work/venv/bin/python scripts/make_tokenizer_fixtures.py [--corpus DIR] [--bench-out DIR]
  --bench-out also writes a larger (32k) Qwen2-style tokenizer and an English text for the
  throughput measurement in docs/TOKENIZER.md (not committed: too big).
"""
import argparse
import json
import os
import random
import sys
import unicodedata

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "tokenizers")

QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                  r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


# ---------------------------------------------------------------------------------------------
# Corpus and strings


def corpus_files(root):
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if "site-packages" in dirpath or "__pycache__" in dirpath:
            continue
        for f in sorted(filenames):
            if f.endswith(".py"):
                files.append(os.path.join(dirpath, f))
    return files


def read_corpus(files, limit_bytes):
    texts, total = [], 0
    for path in files:
        try:
            with open(path, encoding="utf-8") as fh:
                t = fh.read()
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(t)
        total += len(t.encode())
        if total >= limit_bytes:
            break
    return texts


# Assigned, stable code point ranges (Unicode <= 9) so that the Unicode version of the Swift runtime
# and of Oniguruma/Rust agree on every property used.
BLOCKS = [
    (0x20, 0x7E), (0xA0, 0xFF), (0x100, 0x17F), (0x180, 0x24F), (0x250, 0x2AF), (0x300, 0x36F),
    (0x391, 0x3A1), (0x3A3, 0x3C9), (0x410, 0x44F), (0x5D0, 0x5EA), (0x620, 0x64A), (0x660, 0x669),
    (0x905, 0x939), (0x966, 0x96F), (0xE01, 0xE30), (0x1100, 0x1112), (0x2000, 0x200A), (0x2010, 0x2027),
    (0x2070, 0x2079), (0x20A0, 0x20B9), (0x2150, 0x2182), (0x2460, 0x249B), (0x3000, 0x3003),
    (0x3041, 0x3094), (0x30A1, 0x30F6), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0xFF01, 0xFF5E),
    (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1D400, 0x1D44F),
]
SPECIAL_SCALARS = ["\t", "\n", "\r", "\x0b", "\x0c", "\x00", "\x01", "\x1b", "\x1f", "\x7f", "\x85", "\xa0",
                   "\u2028", "\u2029", "\u200b", "\u200d", "\ufeff", "\u3000", "\u202f", "\u205f", "\u1680", "'"]
WORDS = ("the of and to in is you that it he was for on are as with his they I at be this have from or one had "
         "by word but not what all were we when your can said there use an each which she do how their if will "
         "up other about out many then them these so some her would make like him into time has look two more "
         "write go see number no way could people my than first water been call who oil its now find long down "
         "day did get come made may part don't it's we're they've I'll she'd Hello World HTTP JSON iPhone").split()


def random_string(rng):
    kind = rng.randrange(6)
    if kind == 0:  # English-ish words with punctuation and spacing
        n = rng.randrange(1, 30)
        parts = []
        for _ in range(n):
            w = rng.choice(WORDS)
            if rng.random() < 0.1:
                w = w.upper()
            parts.append(w)
            parts.append(rng.choice([" ", " ", " ", "  ", ", ", ". ", "\n", "\t", "   ", "!", "?\n\n", " - "]))
        return "".join(parts)
    if kind == 1:  # numbers
        return " ".join(str(rng.randrange(10 ** rng.randrange(1, 12))) for _ in range(rng.randrange(1, 6)))
    # random scalars from the blocks, with special characters mixed in
    n = rng.randrange(0, 40)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.15:
            out.append(rng.choice(SPECIAL_SCALARS))
        elif r < 0.35:
            out.append(" " * rng.randrange(1, 4))
        elif r < 0.5:
            out.append(rng.choice(WORDS))
        else:
            lo, hi = rng.choice(BLOCKS)
            out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


TRICKY = [
    "", " ", "  ", "\n", "\n\n\n", "\r\n", " \n ", "\t\t", "a", "Hello, world!", "Hello world", " Hello",
    "hello   world", "trailing spaces   ", "   leading spaces", "tabs\tand\tnewlines\n\nend",
    "x" + " " * 200 + "y", " " * 64, "\n" * 40, "a\u00a0b", "\u00a0\u00a0\u00a0", "nbsp\u00a0 mixed \u00a0",
    "中文分词测试，你好世界！", "日本語のテキストです。カタカナ", "한국어 텍스트", "Ελληνικά κείμενα", "Русский текст",
    "עברית", "العربية ١٢٣", "हिन्दी पाठ", "ภาษาไทย",
    "👨‍👩‍👧‍👦 family", "🏳️‍🌈", "👍🏽 ok", "❤️", "🇫🇷🇩🇪", "emoji😀in😀text",
    "e\u0301 cafe\u0301 café", "n\u0303 a\u030a\u0301", "Z\u0351\u0352\u0353a\u0334l\u0335g\u0336o\u0337",
    "\u0000", "nul\u0000byte", "\u0001\u0002\u0003\u001f\u007f", "bell\u0007 esc\u001b[31mred\u001b[0m",
    "\u0085next line", "line\u2028sep\u2029para", "zero\u200bwidth", "\ufeffBOM", "\u3000ideographic space",
    "0", "1234567890", "3.14159 2.71828", "１２３ fullwidth", "²³ superscript ½", "٣٤٥ ४५६",
    "It's I'm you're we've they'll he'd IT'S I'M YOU'RE", "it'ſ long s", "'s 're 've 'll 'd 'm 't",
    "don't can't won't", "'''quotes'''", "\"double\" 'single'",
    "def f(x):\n    return x * 2\n", "if (a && b) { c++; }\n", "<html><body>text</body></html>",
    "https://example.com/path?q=1&b=2#frag", "user@example.com", "C:\\path\\to\\file.txt",
    "  \n  \n", "a\r\nb\r\n\r\nc", "  hello\n\nworld  ", "...!!!???", "----====____", "$100 €50 £20 ¥1000",
    "ﬁ ligature ﬀ", "Å Å", "ǅungla", "ﬃ", "x²", "Ⅻ Ⅳ", "㍿", "ｶﾀｶﾅ",
    "mixed中文and English词", "<|im_start|>user\nhi<|im_end|>", "<s>[INST] hi [/INST]</s>",
    "a<|endoftext|>b", "<|endoftext|><|endoftext|>", "text<tool_call>x</tool_call>", "[MASK] and  [MASK]",
    "the specialword here", "specialwords", "xspecialword", "specialword",
    "<unk>", "<s>", "</s>", " <s> ", "▁", "▁▁x", "a▁b",
]


def strings(seed, count):
    rng = random.Random(seed)
    out = list(TRICKY)
    while len(out) < count:
        out.append(random_string(rng))
    return out


# ---------------------------------------------------------------------------------------------
# Tokenizers


def extra_alphabet_text(seed):
    """Some non-ASCII text mixed into training so that merges of multi-byte sequences exist."""
    rng = random.Random(seed)
    return ["".join(random_string(rng) for _ in range(50)) for _ in range(200)]


def added_tokens_for(style):
    return [
        AddedToken("<|endoftext|>", special=True, normalized=False),
        AddedToken("<|im_start|>", special=True, normalized=False),
        AddedToken("<|im_end|>", special=True, normalized=False),
        AddedToken("<tool_call>", special=False, normalized=False),
        AddedToken("</tool_call>", special=False, normalized=False),
        AddedToken("[MASK]", special=True, lstrip=True, rstrip=True, normalized=False),
        AddedToken("specialword", special=False, single_word=True, normalized=True),
    ]


def train_byte_level(texts, vocab_size, pattern, seed_note, ignore_merges=False, use_split=True,
                     add_prefix_space=False, template=None):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.normalizer = normalizers.NFC()
    if use_split:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, trim_offsets=True,
                                                     use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([t for t in added_tokens_for("bytelevel") if not t.special])
    tok.add_special_tokens([t for t in added_tokens_for("bytelevel") if t.special])
    if template:
        tok.post_processor = template(tok)
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


METASPACE_FIRST = {  # transformers' LlamaConverter with legacy=False (newer Mistral/Llama checkpoints)
    "normalizer": None,
    "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False},
}
METASPACE_ALWAYS_SPLIT = {
    "normalizer": None,
    "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
    "decoder": {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
        {"type": "ByteFallback"}, {"type": "Fuse"}]},
}


def train_sentencepiece_style(texts, vocab_size, byte_fallback=True, limit_alphabet=120, overrides=None):
    """BPE trained on ▁-joined words, then re-assembled the way Mistral's tokenizer.json is."""
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=limit_alphabet)
    trainer_tok.train_from_iterator(texts, trainer=trainer)
    trained = json.loads(trainer_tok.to_str())
    old_vocab = trained["model"]["vocab"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    if byte_fallback:
        for b in range(256):
            vocab["<0x%02X>" % b] = len(vocab)
    for token, _ in sorted(old_vocab.items(), key=lambda kv: kv[1]):
        if token not in vocab:
            vocab[token] = len(vocab)
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])
        ],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": byte_fallback, "ignore_merges": False,
            "vocab": vocab, "merges": trained["model"]["merges"],
        },
    }
    spec.update(overrides or {})
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                    AddedToken("[MASK]", special=True, lstrip=True, rstrip=True, normalized=False)])
    return tok


def bos_template(tok):
    return processors.TemplateProcessing(single="<|endoftext|> $A", pair="$A $B",
                                         special_tokens=[("<|endoftext|>", tok.token_to_id("<|endoftext|>"))])


def record(tok, texts, seed):
    cases = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=True).ids
        ids_plain = tok.encode(t, add_special_tokens=False).ids
        cases.append({
            "text": t,
            "ids": ids,
            "ids_no_special": ids_plain,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
        })
    rng = random.Random(seed + 1)
    size = tok.get_vocab_size(with_added_tokens=True)
    decodes = []
    for _ in range(120):
        ids = [rng.randrange(size) for _ in range(rng.randrange(0, 20))]
        decodes.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False), "text_skip_special": tok.decode(ids, skip_special_tokens=True)})
    return {"encodings": cases, "decodings": decodes}


def write_style(name, tok, texts, seed, config):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"), pretty=False)
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump(config, fh, ensure_ascii=False, indent=1)
    with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as fh:
        json.dump(record(tok, texts, seed), fh, ensure_ascii=False, separators=(",", ":"))
    print(f"{name}: vocab {tok.get_vocab_size(True)}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Chat templates


CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke.\nA short one."}],
    [{"role": "system", "content": "Sys"}, {"role": "user", "content": "  spaced  "},
     {"role": "assistant", "content": " answer "}, {"role": "user", "content": "again 中文 😀"}],
    [{"role": "user", "content": "Think first."},
     {"role": "assistant", "content": "<think>\nreasoning here\n</think>\n\nThe answer is 4."},
     {"role": "user", "content": "And 3+3?"}],
]

TOOL_CONVERSATION = {
    "messages": [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "assistant", "content": "It is 21 °C in Paris."},
    ],
    "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string",
                                                                                                "enum": ["C", "F"]}},
                       "required": ["city"]}}}],
}


def render_templates():
    from transformers.utils.chat_template_utils import render_jinja_template
    tdir = os.path.join(OUT, "chat_templates")
    results = []
    for fname in sorted(os.listdir(tdir)):
        if not fname.endswith(".jinja"):
            continue
        name = fname[:-len(".jinja")]
        with open(os.path.join(tdir, fname), encoding="utf-8") as fh:
            template = fh.read()
        specials = {"bos_token": "<s>", "eos_token": "</s>"} if "mixtral" in name else (
            {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"} if "olmoe" in name else
            {"bos_token": "", "eos_token": "<|im_end|>"})
        cases = [(c, None, {}) for c in CONVERSATIONS]
        if "mixtral" in name:  # roles must alternate: the template raises
            cases.append(([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], None, {}))
            cases.append(([{"role": "tool", "content": "a"}], None, {}))
        if "qwen" in name:
            cases.append((TOOL_CONVERSATION["messages"], TOOL_CONVERSATION["tools"], {}))
            cases.append((TOOL_CONVERSATION["messages"][:1], TOOL_CONVERSATION["tools"], {}))
        if "qwen3" in name:
            cases.append((CONVERSATIONS[4], None, {"enable_thinking": False}))
            cases.append((CONVERSATIONS[0], None, {"enable_thinking": False}))
            cases.append(([{"role": "user", "content": "q"},
                           {"role": "assistant", "content": "a", "reasoning_content": "because"},
                           {"role": "user", "content": "q2"}], None, {}))
        for messages, tools, extra in cases:
            for add_gen in (False, True):
                try:
                    rendered, _ = render_jinja_template(conversations=[messages], tools=tools,
                                                        add_generation_prompt=add_gen, chat_template=template,
                                                        **specials, **extra)
                    out = {"rendered": rendered[0]}
                except Exception as e:  # raise_exception in the template
                    out = {"error": str(e)}
                results.append({"template": name, "messages": messages, "tools": tools,
                                "add_generation_prompt": add_gen, "extra": extra, "specials": specials, **out})
    with open(os.path.join(tdir, "expected.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, ensure_ascii=False, indent=1)
    print(f"chat templates: {len(results)} renders", file=sys.stderr)


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="/root/.pyenv/versions/3.11.7/lib/python3.11")
    ap.add_argument("--bench-out", default=None)
    ap.add_argument("--skip-templates", action="store_true")
    args = ap.parse_args()

    files = corpus_files(args.corpus)
    even, odd = files[0::2], files[1::2]
    random.Random(1).shuffle(even)
    random.Random(2).shuffle(odd)
    main_texts = read_corpus(even, 3_000_000) + extra_alphabet_text(10)
    heldout_texts = read_corpus(odd, 3_000_000) + extra_alphabet_text(20)

    qwen_cfg = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    neox_cfg = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    mistral_cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

    write_style("qwen2", train_byte_level(main_texts, 1500, QWEN2_PATTERN, "main"), strings(100, 320), 100, qwen_cfg)
    write_style("neox", train_byte_level(main_texts, 1200, None, "main", use_split=False), strings(200, 320), 200,
                neox_cfg)
    write_style("mistral", train_sentencepiece_style(main_texts, 1200), strings(300, 320), 300, mistral_cfg)

    write_style("qwen2-heldout", train_byte_level(heldout_texts, 1800, LLAMA3_PATTERN, "heldout", ignore_merges=True),
                strings(1100, 250), 1100, qwen_cfg)
    write_style("neox-heldout", train_byte_level(heldout_texts, 900, None, "heldout", use_split=False,
                                                 add_prefix_space=True, template=bos_template),
                strings(1200, 250), 1200, neox_cfg)
    write_style("mistral-heldout", train_sentencepiece_style(heldout_texts, 1000, byte_fallback=False,
                                                             limit_alphabet=80),
                strings(1300, 250), 1300, mistral_cfg)

    write_style("mistral-metaspace", train_sentencepiece_style(main_texts, 1100, overrides=METASPACE_FIRST),
                strings(400, 250), 400, mistral_cfg)
    write_style("mistral-metaspace-heldout", train_sentencepiece_style(heldout_texts, 900, limit_alphabet=100,
                                                                       overrides=METASPACE_ALWAYS_SPLIT),
                strings(1400, 250), 1400, mistral_cfg)

    if not args.skip_templates:
        render_templates()

    if args.bench_out:
        os.makedirs(args.bench_out, exist_ok=True)
        big = train_byte_level(read_corpus(files, 30_000_000), 32000, QWEN2_PATTERN, "bench")
        big.save(os.path.join(args.bench_out, "tokenizer.json"))
        import pydoc_data.topics as topics
        english = "\n\n".join(topics.topics.values())
        with open(os.path.join(args.bench_out, "english.txt"), "w", encoding="utf-8") as fh:
            fh.write(english)
        import time
        t0 = time.perf_counter()
        big.encode(english)
        dt = time.perf_counter() - t0
        print(f"bench: {len(english.encode())} bytes; HF tokenizers (Python binding, 1 call) "
              f"{len(english.encode()) / dt / 1e6:.2f} MB/s", file=sys.stderr)


if __name__ == "__main__":
    main()
