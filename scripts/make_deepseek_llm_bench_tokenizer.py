#!/usr/bin/env python3
"""Rebuilds DeepSeek LLM's real 100k tokenizer (the one DeepSeek-V2 / V2-Lite / Coder-V2 ship) from
llama.cpp's vocabulary test file, for the throughput figures and the whole-text agreement check in
docs/TOKENIZER.md. Nothing it writes is committed.

llama.cpp keeps `models/ggml-vocab-deepseek-llm.gguf` (tokens, merges and token types of
deepseek-ai/deepseek-llm-7b-base, no weights) beside `.inp`/`.out` files: test strings and the ids the
Hugging Face tokenizer gave for them. This script writes OUT/v2 (that vocabulary with the published
DeepSeek LLM pre-tokenizer, built by make_deepseek_family_tokenizers.deepseek_v2_pre_tokenizer) and
OUT/v3pre (the same vocabulary with DeepSeek-V3's three Splits, to compare the two pre-tokenizers on
equal terms), checks OUT/v2 against llama.cpp's recorded ids, writes OUT/english.txt (the Python
documentation topics, as scripts/make_tokenizer_fixtures.py --bench-out does) and OUT/multi.txt (the
fixture strings of many scripts), and with --moe-serve checks that `moe-serve tokenize` gives the ids
`tokenizers` gives for both texts with both tokenizers.

Usage: /work/venv/bin/python scripts/make_deepseek_llm_bench_tokenizer.py \\
           ~/.cache/moe-serve-llama-cpp/src/models/ggml-vocab-deepseek-llm.gguf OUT [--moe-serve .build/release/moe-serve]
"""
import argparse
import json
import os
import subprocess
import sys
import time

from tokenizers import Tokenizer, decoders, models, normalizers, processors

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_deepseek_family_tokenizers as fam  # noqa: E402
import make_tokenizer_fixtures as base  # noqa: E402


def read_gguf(path):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(path)), "gguf-py"))
    import gguf
    r = gguf.GGUFReader(path)
    field = lambda k: r.fields[k].contents()  # noqa: E731
    assert field("tokenizer.ggml.pre") == "deepseek-llm", field("tokenizer.ggml.pre")
    return field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type"), field("tokenizer.ggml.merges")


def build(tokens, types, merges, pre_tokenizer):
    # As GGUFTokenizerFiles does: control tokens (3) are special added tokens, user-defined ones (4, here
    # the 13 byte characters after BOS/EOS) plain added tokens; llama.cpp's [PAD] fillers are left out.
    vocab = {t: i for i, t in enumerate(tokens) if types[i] not in (3, 4) and not t.startswith("[PAD")}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges]))
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": types[i] == 4, "special": types[i] == 3}
                            for i, t in enumerate(tokens) if types[i] in (3, 4) and not t.startswith("[PAD")]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    bos = fam.DS_SPECIAL[0]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--moe-serve", default=None)
    args = ap.parse_args()
    tokens, types, merges = read_gguf(args.gguf)
    import pydoc_data.topics as topics
    texts = {"english": "\n\n".join(topics.topics.values()),
             "multi": "\n".join(base.strings(4242, 4000)[len(base.TRICKY):] + fam.DSV2_STRINGS * 20
                                + fam.FAMILY_STRINGS * 20)}
    os.makedirs(args.out, exist_ok=True)
    for name, text in texts.items():
        with open(os.path.join(args.out, f"{name}.txt"), "w", encoding="utf-8") as fh:
            fh.write(text)
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": fam.DS_SPECIAL[0],
              "eos_token": fam.DS_SPECIAL[1], "legacy": True, "tokenizer_class": "LlamaTokenizerFast"}
    failed = False
    for name, pre in [("v2", fam.deepseek_v2_pre_tokenizer()), ("v3pre", fam.deepseek_pre_tokenizer())]:
        tok = build(tokens, types, merges, pre)
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        tok.save(os.path.join(d, "tokenizer.json"))
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
            json.dump(config, fh, ensure_ascii=False)
        if name == "v2":
            with open(args.gguf + ".inp", encoding="utf-8") as fh:
                inputs = fh.read().split("\n__ggml_vocab_test__\n")
            with open(args.gguf + ".out", encoding="utf-8") as fh:
                outputs = fh.read().split("\n")
            pairs = list(zip(inputs, outputs))
            bad = sum(tok.encode(t, add_special_tokens=False).ids != [int(x) for x in o.split()] for t, o in pairs)
            print(f"v2 against llama.cpp's recorded Hugging Face ids: {len(pairs) - bad} of {len(pairs)} agree")
            failed |= bad > 0
        for tname, text in texts.items():
            t0 = time.process_time()
            ids = tok.encode(text, add_special_tokens=False).ids
            dt = time.process_time() - t0
            line = (f"{name} {tname}: {len(text.encode())} bytes, {len(ids)} ids; tokenizers (Python binding, one "
                    f"call) {len(text.encode()) / dt / 1e6:.2f} MB/s of CPU")
            if args.moe_serve:
                out = subprocess.run([args.moe_serve, "tokenize", "--model", d, "--text-file",
                                      os.path.join(args.out, f"{tname}.txt"), "--no-special-tokens"],
                                     check=True, capture_output=True).stdout
                same = json.loads(out)["ids"] == ids
                failed |= not same
                line += "; moe-serve tokenize: " + ("same ids" if same else "DIFFERENT ids")
            print(line)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
