#!/usr/bin/env python3
"""Makes the DeepSeek-V3, GLM-4.5 and MiniMax-M2 tokenizer fixtures under Tests/Fixtures/tokenizers/.

Each is a small byte-level BPE trained here with Hugging Face `tokenizers`, assembled with the same
pre-tokenizer / normalizer / decoder structure as the family's published tokenizer.json and with the
family's special tokens (names only: the vocabularies are ours, nothing is copied from a model repo):

  deepseek-v3  Sequence[Split(\\p{N}{1,3}), Split([一-龥぀-ゟ゠-ヿ]+), Split(letters / marks / punctuation
               regex), ByteLevel(use_regex=false)], empty normalizer Sequence, ByteLevel decoder,
               "<｜begin▁of▁sentence｜> $A" post-processor; <｜User｜>, <｜Assistant｜>, <think>, tool
               tokens as non-special added tokens (as DeepSeek-V3 has them), BOS/EOS/pad special
  glm-4.5      Split(Llama-3/GLM-4 regex, \\p{N}{1,3}) + ByteLevel(use_regex=false); [gMASK], <sop>,
               <|user|>, <|assistant|>, <|observation|>, <think>, ... special; a "[gMASK] <sop> $A"
               template post-processor after ByteLevel (a Sequence post-processor)
  minimax-m2   Split(o200k regex with [\\r\\n/]*, behavior Removed, invert true) + ByteLevel(use_regex=
               false); ]~!b[, ]~b], [e~[, <think>, <minimax:tool_call>, ...

The expected ids and texts come from transformers' AutoTokenizer (which loads these as
TokenizersBackend / PreTrainedTokenizerFast) and are checked against `tokenizers` itself. Strings: the
generic set of scripts/make_tokenizer_fixtures.py plus numbers, CJK/kana, emoji, code, white-space runs
and each family's special tokens.

It also writes the two `-serve` tokenizers the `serve` end-to-end test puts beside the tiny DeepSeek-V3
and GLM-4.5 model fixtures (vocabulary 131): printable ASCII only, ids below 131, with a chat template
written for the test (not the published one) and the prompt ids transformers gives for its conversation.

Usage: /work/venv/bin/python scripts/make_deepseek_family_tokenizers.py [--corpus DIR]
"""
import argparse
import json
import os
import random
import sys
import tempfile

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tokenizer_fixtures as base  # noqa: E402

OUT = base.OUT

DS_NUMBERS = r"\p{N}{1,3}"
DS_CJK = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
DS_WORDS = ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
            "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")
O200K = (r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
         r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
         r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

DS_SPECIAL = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"]
DS_ADDED = ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
            "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>",
            "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"]
DS_ADDED_SPECIAL = ["<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>", "<|EOT|>"]
GLM_SPECIAL = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
               "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<think>", "</think>",
               "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<arg_key>", "</arg_key>",
               "<arg_value>", "</arg_value>", "/nothink"]
MM_SPECIAL = ["]!p~[", "]~b]", "]~!b[", "[e~[", "]!d~[", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
              "<think>", "</think>", "<minimax:tool_call>", "</minimax:tool_call>"]

FAMILY_STRINGS = [
    "1", "12", "123", "1234", "12345", "1234567890123", "3.14159", "v1.2.3-rc4", "x=10,y=200,z=3000",
    "１２３４５ fullwidth", "٣٤٥٦٧ arabic-indic", "²³⁴ ½¾ ⅧⅨⅩ", "①②③④", "0x1F600 0b1010",
    "中文分词测试，你好世界！", "汉字かなカタカナ混在テキスト", "ひらがなだけ", "ｶﾀｶﾅ半角", "龥龦 edge 一丁",
    "日本語のテキストです。", "中文123中文", "abc中文def", "한국어 텍스트", "ー・ヽヾ",
    "😀😃😄 emoji 👨‍👩‍👧‍👦 🏳️‍🌈 👍🏽", "e\u0301 cafe\u0301 naïve", "\u0301\u0302 leading marks", "a\u0308\u0304b",
    "HTTPServer iPhone McDonald's XMLHttpRequest", "DON'T I'LL we'RE it'S", "'s'S", "ǅungla Ǆ ǆ", "ʰʲ modifier",
    "def f(x):\n    return x ** 2  # square\n", "if (a && b) { c++; } else { d--; }\n", "foo.bar(baz)[0]",
    "path/to/file.py //comment /* block */", "https://example.com/a/b?c=d", "<div class=\"x\">text</div>",
    "x" + " " * 17 + "y", "\t\t\tindent", "  \n\n  \n", "\r\n\r\n", "a \n b", "trailing   ", "   ", "\n",
    "$100 €50 ¥1000 ±5 ≤ ≥ ∑∫", "...!!!???", "--==__", "«quotes» „German“ “smart”", "¿Qué? ¡Sí!",
    "Ελληνικά Русский עברית العربية हिन्दी ภาษาไทย",
]


def family_strings(specials):
    out = list(FAMILY_STRINGS)
    for i, s in enumerate(specials):
        out.append(s)
        out.append(f"before{s}after")
        out.append(f" {s} spaced {s}{specials[(i + 1) % len(specials)]}")
    return out


def train(texts, vocab_size, pre_tokenizer, normalizer, specials):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def deepseek_pre_tokenizer():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(DS_NUMBERS), behavior="isolated", invert=False),
        pre_tokenizers.Split(Regex(DS_CJK), behavior="isolated", invert=False),
        pre_tokenizers.Split(Regex(DS_WORDS), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])


def glm_pre_tokenizer():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(base.LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])


def minimax_pre_tokenizer():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])


def deepseek(texts, vocab_size=1400):
    tok = train(texts, vocab_size, deepseek_pre_tokenizer(), normalizers.Sequence([]), DS_SPECIAL)
    tok.add_tokens([AddedToken(t, special=False, normalized=True) for t in DS_ADDED])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in DS_ADDED_SPECIAL])
    bos = DS_SPECIAL[0]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": bos, "eos_token": DS_SPECIAL[1],
              "pad_token": DS_SPECIAL[1], "unk_token": None, "clean_up_tokenization_spaces": False, "legacy": True,
              "tokenizer_class": "LlamaTokenizerFast"}
    return tok, config, DS_SPECIAL + DS_ADDED + DS_ADDED_SPECIAL


def glm(texts, vocab_size=1300):
    tok = train(texts, vocab_size, glm_pre_tokenizer(), None, GLM_SPECIAL[:1])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GLM_SPECIAL[1:]])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B",
                                      special_tokens=[("[gMASK]", tok.token_to_id("[gMASK]")),
                                                      ("<sop>", tok.token_to_id("<sop>"))]),
    ])
    config = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False,
              "do_lower_case": False, "remove_space": False, "tokenizer_class": "PreTrainedTokenizerFast"}
    return tok, config, GLM_SPECIAL


def minimax(texts, vocab_size=1300):
    tok = train(texts, vocab_size, minimax_pre_tokenizer(), None, MM_SPECIAL[:5])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in MM_SPECIAL[5:]])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    config = {"bos_token": "]~!b[", "eos_token": "[e~[", "unk_token": "]!d~[", "pad_token": "]!p~[",
              "clean_up_tokenization_spaces": False, "add_prefix_space": False,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    return tok, config, MM_SPECIAL


def load_transformers(tok, config):
    from transformers import AutoTokenizer
    d = tempfile.mkdtemp()
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump(config, fh, ensure_ascii=False)
    return AutoTokenizer.from_pretrained(d)


def record(name, tok, hf, texts, seed):
    cases, mismatches = [], 0
    for t in texts:
        ids = hf.encode(t, add_special_tokens=True)
        plain = hf.encode(t, add_special_tokens=False)
        if ids != tok.encode(t, add_special_tokens=True).ids or plain != tok.encode(t, add_special_tokens=False).ids:
            mismatches += 1
        cases.append({"text": t, "ids": ids, "ids_no_special": plain,
                      "decoded": hf.decode(ids, skip_special_tokens=False),
                      "decoded_skip_special": hf.decode(ids, skip_special_tokens=True)})
    rng = random.Random(seed + 1)
    size = tok.get_vocab_size(with_added_tokens=True)
    decodes = []
    for _ in range(100):
        ids = [rng.randrange(size) for _ in range(rng.randrange(0, 20))]
        decodes.append({"ids": ids, "text": hf.decode(ids, skip_special_tokens=False),
                        "text_skip_special": hf.decode(ids, skip_special_tokens=True)})
    if mismatches:
        print(f"{name}: transformers and tokenizers disagree on {mismatches} strings (kept transformers')",
              file=sys.stderr)
    return {"encodings": cases, "decodings": decodes}


# Characters of every class the three pre-tokenizers tell apart (Lu, Ll, Lt, Lm, Lo, Mn, Mc, Nd, No, Nl, P,
# S, white space, CR/LF, Cf, contraction letters, CJK inside and outside DeepSeek's ranges).
ADVERSARIAL = ["A", "B", "a", "b", "s", "S", "t", "\u01c5", "\u02b0", "\u4e2d", "\u9fa6", "\u3042", "\u30ab",
               "\u0e01", "\u0301", "\u0903", "1", "2", "\u0661", "\u00bd", "\u2167", " ", " ", "\n", "\r", "\t",
               "'", "'", "/", ".", "!", "$", "+", "\u2122", "\u2013", "\u200b", "\u00a0", "\u017f", "\u3000", "_"]


def pre_tokenizations(tok, seed):
    """The pre-tokenizer's pieces (byte-level spelled) for adversarial strings: the split itself, not only
    the ids it leads to."""
    rng = random.Random(seed)
    out = []
    for _ in range(300):
        text = "".join(rng.choice(ADVERSARIAL) for _ in range(rng.randrange(0, 24)))
        out.append({"text": text, "pieces": [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)]})
    return out


def write(name, tok, config, texts, seed):
    hf = load_transformers(tok, config)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"), pretty=False)
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump(config, fh, ensure_ascii=False, indent=1)
    with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as fh:
        json.dump(record(name, tok, hf, texts, seed), fh, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(d, "pre_tokenizer_cases.json"), "w", encoding="utf-8") as fh:
        json.dump(pre_tokenizations(tok, seed + 7), fh, ensure_ascii=False, separators=(",", ":"))
    print(f"{name}: vocab {tok.get_vocab_size(True)} ({type(hf).__name__})", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The `serve` tokenizers: ids below the model fixtures' vocabulary (131).

SERVE_VOCAB = 131
# Written for the test in each family's shape (not the published templates): BOS, role tokens, the
# thinking switch of the generation prompt.
DS_SERVE_TEMPLATE = (
    "{{ bos_token }}{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ m['content'] }}"
    "{%- elif m['role'] == 'user' -%}<｜User｜>{{ m['content'] }}"
    "{%- elif m['role'] == 'assistant' -%}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<｜Assistant｜>{%- if thinking is defined and thinking -%}<think>"
    "{%- else -%}</think>{%- endif -%}{%- endif -%}")
GLM_SERVE_TEMPLATE = (
    "[gMASK]<sop>{%- for m in messages -%}<|{{ m.role }}|>\n{{ m.content }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{{- '\\n<think></think>' if enable_thinking is defined "
    "and not enable_thinking else '' -}}{%- endif -%}")


def serve_tokenizer(pre_tokenizer, specials, eos, bos, template):
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = {}
    # GPT-2's byte-to-character map: printable bytes map to themselves, the others to U+0100 onwards.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    n = 0
    for b in range(256):
        if b in printable:
            byte_to_char[b] = chr(b)
        else:
            byte_to_char[b] = chr(256 + n)
            n += 1
    assert set(byte_to_char.values()) == set(alphabet)
    vocab = {}
    for s in specials:
        vocab[s] = len(vocab)
    for b in [9, 10] + list(range(32, 127)):
        vocab[byte_to_char[b]] = len(vocab)
    merges = []
    for word in [" t", " a", "he", "in", "re", "on", " the", "er", " s", "at", "en", "or", "is", "it", "ll"]:
        chars = [byte_to_char[b] for b in word.encode()]
        while len(chars) > 1 and len(vocab) < SERVE_VOCAB:
            a, b2 = chars[0], chars[1]
            merged = a + b2
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append([a, b2])
            chars = [merged] + chars[2:]
    assert len(vocab) <= SERVE_VOCAB, len(vocab)
    spec = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": vocab[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for s in specials],
        "normalizer": None, "pre_tokenizer": json.loads(Tokenizer(models.BPE()).to_str())["pre_tokenizer"],
        "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                             "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.pre_tokenizer = pre_tokenizer
    config = {"bos_token": bos, "eos_token": eos, "clean_up_tokenization_spaces": False,
              "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template}
    return tok, config


SERVE_MESSAGES = [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Hi there, what is 12+30?"}]


def write_serve(name, tok, config, extra):
    hf = load_transformers(tok, config)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"), pretty=False)
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump(config, fh, ensure_ascii=False, indent=1)
    rendered = hf.apply_chat_template(SERVE_MESSAGES, tokenize=False, add_generation_prompt=True, **extra)
    ids = hf.apply_chat_template(SERVE_MESSAGES, tokenize=True, add_generation_prompt=True, return_dict=False, **extra)
    if isinstance(ids, dict):
        ids = ids["input_ids"]
    assert max(ids) < SERVE_VOCAB, ids
    with open(os.path.join(d, "chat.json"), "w", encoding="utf-8") as fh:
        json.dump({"messages": SERVE_MESSAGES, "extra": extra, "rendered": rendered, "prompt_ids": list(ids)}, fh,
                  ensure_ascii=False, indent=1)
    print(f"{name}: {len(ids)} prompt ids {rendered!r}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="/root/.pyenv/versions/3.11.7/lib/python3.11")
    args = ap.parse_args()
    files = base.corpus_files(args.corpus)
    random.Random(3).shuffle(files)
    cjk = ["".join(chr(random.Random(k).randint(0x4E00, 0x4FFF)) for _ in range(30)) + "。ひらがなカタカナ"
           for k in range(300)]
    texts = base.read_corpus(files, 2_000_000) + base.extra_alphabet_text(30) + cjk

    for name, make, seed in [("deepseek-v3", deepseek, 2100), ("glm-4.5", glm, 2200), ("minimax-m2", minimax, 2300)]:
        tok, config, specials = make(texts)
        strings = family_strings(specials) + base.strings(seed, 200)
        write(name, tok, config, strings, seed)

    tok, config = serve_tokenizer(deepseek_pre_tokenizer(), DS_SPECIAL[:2] + ["<｜User｜>", "<｜Assistant｜>", "<think>",
                                                                            "</think>"],
                                  DS_SPECIAL[1], DS_SPECIAL[0], DS_SERVE_TEMPLATE)
    write_serve("deepseek-v3-serve", tok, config, {"thinking": False})
    tok, config = serve_tokenizer(glm_pre_tokenizer(), ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>",
                                                        "<|assistant|>", "<think>", "</think>"],
                                  "<|endoftext|>", None, GLM_SERVE_TEMPLATE)
    write_serve("glm-4.5-serve", tok, config, {"enable_thinking": False})


if __name__ == "__main__":
    main()
