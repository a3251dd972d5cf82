#!/usr/bin/env python3
"""Makes the DeepSeek-V3, DeepSeek-V2, GLM-4.5 and MiniMax-M2 tokenizer fixtures under Tests/Fixtures/tokenizers/.

Each is a small byte-level BPE trained here with Hugging Face `tokenizers`, assembled with the same
pre-tokenizer / normalizer / decoder structure as the family's published tokenizer.json and with the
family's special tokens (names only: the vocabularies are ours, nothing is copied from a model repo):

  deepseek-v3  Sequence[Split(\\p{N}{1,3}), Split([一-龥぀-ゟ゠-ヿ]+), Split(letters / marks / punctuation
               regex), ByteLevel(use_regex=false)], empty normalizer Sequence, ByteLevel decoder,
               "<｜begin▁of▁sentence｜> $A" post-processor; <｜User｜>, <｜Assistant｜>, <think>, tool
               tokens as non-special added tokens (as DeepSeek-V3 has them), BOS/EOS/pad special
  deepseek-v2  DeepSeek LLM's pre-tokenizer, shipped by DeepSeek-V2 / V2-Lite / Coder-V2 (llama.cpp's
               "deepseek-llm"): Sequence[Split([\r\n]), Split(\s?[cased-letter ranges]+), Split(\s?[ASCII and
               full-width punctuation]+), Split(\s+$), Split([一-龥ࠀ-一가-퟿]+), Digits(individual_digits),
               ByteLevel(use_regex=false)], all Isolated; empty normalizer Sequence, ByteLevel decoder,
               "<｜begin▁of▁sentence｜> $A"; the 13 byte characters DeepSeek LLM adds as plain added tokens (ø, ö,
               ..., so raw "ø" in text matches one), FIM specials, role and tool tokens as non-special added tokens
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

Usage: /work/venv/bin/python scripts/make_deepseek_family_tokenizers.py [--corpus DIR] [--only NAME ...]
  --only deepseek-v2 (for example) rewrites that fixture alone and leaves the others as committed.
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
# DeepSeek LLM / DeepSeek-V2 (the class text exactly as tokenizer.json spells it, written with escapes).
DSV2_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481"
    "\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf"
    "\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d"
    "\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc"
    "\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115"
    "\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e"
    "\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f"
    "\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a"
    "\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943")
DSV2_PATTERNS = ["[\r\n]", "\\s?[" + DSV2_LETTERS + "]+",
                 "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+", "\\s+$",
                 "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"]
O200K = (r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
         r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
         r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

DS_SPECIAL = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"]
DS_ADDED = ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
            "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>",
            "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"]
DS_ADDED_SPECIAL = ["<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>", "<|EOT|>"]
# DeepSeek LLM completes the byte alphabet with the 13 bytes UTF-8 never uses, as plain added tokens.
DSV2_BYTE_TOKENS = ["\u00f8", "\u00f6", "\u00fa", "\u00ff", "\u00f5", "\u00f7", "\u00fb", "\u00fd", "\u00c0", "\u00f9",
                    "\u00c1", "\u00fe", "\u00fc"]
DSV2_ADDED_SPECIAL = ["<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>", "<｜completion｜>"]
DSV2_ADDED = ["<｜User｜>", "<｜Assistant｜>", "<|EOT|>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
              "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>",
              "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>", "<｜tool▁sep｜>"]
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


# Strings for each DeepSeek-V2 Split: CR/LF runs, cased letters in and out of the class with a leading space,
# ASCII / full-width / curly-quote punctuation runs, trailing white space, the U+0800-U+9FA5 and Hangul runs,
# every kind of \p{N} (Digits splits on all of them), emoji, and the added byte characters inside words.
DSV2_STRINGS = [
    "a\r\n\r\nb", "\r\r\n\n", "x \r\n y", "  \r\n  ", "line1\rline2\n\nline3\r\n", "\n\n\n", "\r",
    " caf\u00e9 na\u00efve \u00c5ngstr\u00f6m", "Stra\u00dfe M\u00fcller \u00fcber fa\u00e7ade", " \u00f8re \u00d8re",
    " \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u1f00\u03c1\u03c7\u03ae \u1f45\u03c4\u03b9",
    " \u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u044f\u0437\u044b\u043a", " \u01c5ungla \u01c8 \u0294 \u02b0\u02b2",
    " \u13a0\u13a1 Cherokee \uab70", " \u10a0\u10d0\u10d1 Georgian \u1c90", " \u00b5 \u2126 \u212a \u2139 \u00aa \u00ba",
    " \uff46\uff55\uff4c\uff4c \uff37\uff49\uff44\uff54\uff48", " \U00010400\U00010428 deseret", "\u0561\u0562 \u0531",
    "!!!???...", " --> ", "a:b;c<d=e>f", " ``` ", "foo.bar_baz", "x!=y&&z||w", "#include <stdio.h>", "@user #tag",
    "\u4f60\u597d\uff01\uff01\u4e16\u754c\uff0c\u3002", "\uff08\u6ce8\uff09\u3010\u91cd\u8981\u3011",
    "\u300c\u5f15\u7528\u300d", "\u3000\u5168\u89d2\u3000 \u3000x", "\u2018quoted\u2019 \u201cdouble\u201d",
    "\u2026 \u2014 \u00ab\u00bb", "\u201eGerman\u201c", " \uff01x \uff1f", "a\u3001b\u3002c",
    "end   ", "end \t ", "\u4e2d\u6587  ", "\U0001f600  ", "a \n", "a  \n  b  ", "x\u3000", "x\u00a0 ", " ", "\t\t",
    "\u4e2d\u6587\u5206\u8bcd", "\u9fa5\u9fa6", "\u0800 samaritan \u07ff", "\ud55c\uad6d\uc5b4\ud14d\uc2a4\ud2b8 \ud55c\uad6d\uc5b4",
    "\u3131\u3134\u3137", "\u1100\u1101", "\u3072\u3089\u304c\u306a", "\uff76\uff80\uff76\uff85",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22", "\u0939\u093f\u0928\u094d\u0926\u0940", "abc\u4e2d\u6587def \ud55c\uae00x",
    "1234567890", "\uff13\uff0e\uff11\uff14", "\u0663\u0664\u0665", "\u00b2\u00b3\u00bd", "\u216b \u2167", "v1.2.3",
    "1,000,000", "0x1F600", "\u4e00\u4e8c\u4e09", "x2y", " 42 ", "\u2460\u2461",
    "\U0001f600\U0001f603\U0001f604", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f3f3\ufe0f\u200d\U0001f308",
    "a\U0001f600b", " \U0001f600 ", "\U0001f1ef\U0001f1f5", "e\u0301 \u0301x",
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


def deepseek_v2_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in DSV2_PATTERNS]
        + [pre_tokenizers.Digits(individual_digits=True),
           pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])


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


def deepseek_v2(texts, vocab_size=1500):
    tok = train(texts, vocab_size, deepseek_v2_pre_tokenizer(), normalizers.Sequence([]), DS_SPECIAL[:2])
    # Already in the byte alphabet, so they keep their ids; as added tokens they match raw text.
    tok.add_tokens([AddedToken(t, special=False, normalized=True) for t in DSV2_BYTE_TOKENS])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in DSV2_ADDED_SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=True) for t in DSV2_ADDED])
    bos = DS_SPECIAL[0]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": bos, "eos_token": DS_SPECIAL[1],
              "pad_token": DS_SPECIAL[1], "unk_token": None, "clean_up_tokenization_spaces": False, "legacy": True,
              "tokenizer_class": "LlamaTokenizerFast"}
    return tok, config, DS_SPECIAL[:2] + DSV2_ADDED_SPECIAL + DSV2_ADDED


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


# DeepSeek-V2's classes: cased letters in and out of its ranges (µ, Ω, K, ǅ in; ª, ʰ, Georgian Mkhedruli out),
# letters its CJK range (U+0800-U+9FA5) also covers (Greek Extended, Georgian, Cherokee), the range edges,
# Hangul, full-width letters and punctuation, curly quotes, U+3000-U+3002, white space (CR, LF, NBSP, LS,
# NEL), every kind of number, marks, emoji.
ADVERSARIAL_V2 = ["A", "z", "a", "\u00e9", "\u00b5", "\u00aa", "\u2126", "\u212a", "\u01c5", "\u02b0", "\u03b1",
                  "\u1f00", "\u0416", "\u10a0", "\u10d0", "\u13a0", "\u4e2d", "\u9fa6", "\uac00", "\ud7a3",
                  "\u3131", "\u0800", "\u07ff", "\uff71", "\uff21", "\uff01", "\uff0c", "\u3002", "\u3000",
                  "\u3001", "\u2018", "\u201d", "\u2026", "1", "\u0663", "\u00b2", "\u216b", " ", " ", "\t", "\n",
                  "\r", "\u00a0", "\u2028", "\u0085", "!", ".", "$", "_", "'", "\U0001f600", "\u0301", "\u200b"]


def pre_tokenizations(tok, seed, alphabet=ADVERSARIAL):
    """The pre-tokenizer's pieces (byte-level spelled) for adversarial strings: the split itself, not only
    the ids it leads to."""
    rng = random.Random(seed)
    out = []
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 24)))
        out.append({"text": text, "pieces": [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)]})
    return out


def write(name, tok, config, texts, seed, alphabet=ADVERSARIAL):
    hf = load_transformers(tok, config)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"), pretty=False)
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump(config, fh, ensure_ascii=False, indent=1)
    with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as fh:
        json.dump(record(name, tok, hf, texts, seed), fh, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(d, "pre_tokenizer_cases.json"), "w", encoding="utf-8") as fh:
        json.dump(pre_tokenizations(tok, seed + 7, alphabet), fh, ensure_ascii=False, separators=(",", ":"))
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
    ap.add_argument("--only", nargs="*", help="fixture names to rewrite (default: all)")
    args = ap.parse_args()
    wanted = (lambda name: not args.only or name in args.only)
    files = base.corpus_files(args.corpus)
    random.Random(3).shuffle(files)
    cjk = ["".join(chr(random.Random(k).randint(0x4E00, 0x4FFF)) for _ in range(30)) + "。ひらがなカタカナ"
           for k in range(300)]
    texts = base.read_corpus(files, 2_000_000) + base.extra_alphabet_text(30) + cjk

    for name, make, seed in [("deepseek-v3", deepseek, 2100), ("glm-4.5", glm, 2200), ("minimax-m2", minimax, 2300),
                             ("deepseek-v2", deepseek_v2, 2400)]:
        if not wanted(name):
            continue
        tok, config, specials = make(texts)
        strings = family_strings(specials) + base.strings(seed, 200)
        if name == "deepseek-v2":
            strings = DSV2_STRINGS + [t for t in strings if t not in DSV2_STRINGS]
            write(name, tok, config, strings, seed, ADVERSARIAL_V2)
        else:
            write(name, tok, config, strings, seed)

    if wanted("deepseek-v3-serve"):
        tok, config = serve_tokenizer(deepseek_pre_tokenizer(), DS_SPECIAL[:2] + ["<｜User｜>", "<｜Assistant｜>",
                                                                                "<think>", "</think>"],
                                      DS_SPECIAL[1], DS_SPECIAL[0], DS_SERVE_TEMPLATE)
        write_serve("deepseek-v3-serve", tok, config, {"thinking": False})
    if wanted("glm-4.5-serve"):
        tok, config = serve_tokenizer(glm_pre_tokenizer(), ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>",
                                                            "<|user|>", "<|assistant|>", "<think>", "</think>"],
                                      "<|endoftext|>", None, GLM_SERVE_TEMPLATE)
        write_serve("glm-4.5-serve", tok, config, {"enable_thinking": False})

if __name__ == "__main__":
    main()
