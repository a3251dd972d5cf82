#!/usr/bin/env python3
"""Make a GGUF with a SentencePiece (`tokenizer.ggml.model = llama`) tokenizer and the
encodings it must give (issue 21 item 3).

    /work/venv/bin/python scripts/gguf/make_spm_fixture.py [--llama-cpp ~/.cache/moe-serve-llama-cpp]

Run by hand, never in CI (needs sentencepiece, torch, transformers and a built llama.cpp).

1. trains a 640-piece SentencePiece BPE model with byte fallback (as Llama/Mistral/Mixtral
   tokenizers are) on README.md and docs/ARCHITECTURE.md;
2. builds a tiny random Mixtral checkpoint (vocab 640) with that `tokenizer.model` and converts
   it with llama.cpp's own converter (`_set_vocab_sentencepiece`: tokens, scores, token types,
   `<0xNN>` byte tokens, add_space_prefix, add_bos/add_eos) to Q8_0;
3. encodes the test texts with the sentencepiece library (BOS first, as llama.cpp adds it)
   and with llama-server's `/tokenize` on the GGUF, and requires the two to agree.

Output in Tests/Fixtures/gguf/spm: `mixtral-spm-Q8_0.gguf` and `cases.json` =
[{"text", "ids"}] (ids with BOS). `GGUFTokenizerTests` requires MoEServe's tokenizer built from
the GGUF's metadata to give the same ids and decode them back to the text.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space and  two   spaces",
    "tabs\tand\nnew lines\n\n",
    "Numbers 1234567890 and 3.14159",
    "naïve café, Straße, Ærøskøbing",
    "日本語のテキスト and 中文",
    "emoji 🙂🚀 and symbols ✓ ≤ ≥ →",
    "def add(a, b):\n    return a + b",
    "MoE experts live on disk; the expert cache keeps the hot ones in RAM.",
    "",
    "   ",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-cpp", type=Path, default=Path.home() / ".cache/moe-serve-llama-cpp")
    parser.add_argument("--out", type=Path, default=ROOT / "Tests/Fixtures/gguf/spm")
    args = parser.parse_args()
    import sentencepiece as spm
    import torch
    import transformers

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.txt"
        corpus.write_text((ROOT / "README.md").read_text() + (ROOT / "docs/ARCHITECTURE.md").read_text())
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp / "sp"), vocab_size=640, model_type="bpe",
                                       byte_fallback=True, character_coverage=0.9995, split_digits=True,
                                       allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
                                       normalization_rule_name="identity", num_threads=1, minloglevel=2)
        sp = spm.SentencePieceProcessor(model_file=str(tmp / "sp.model"))

        checkpoint = tmp / "mixtral"
        config = transformers.MixtralConfig(vocab_size=640, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            num_key_value_heads=1, num_local_experts=2, num_experts_per_tok=1,
                                            intermediate_size=32, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                                            sliding_window=None, tie_word_embeddings=False)
        torch.manual_seed(0)
        transformers.MixtralForCausalLM(config).to(torch.float32).save_pretrained(checkpoint, safe_serialization=True)
        shutil.copy(tmp / "sp.model", checkpoint / "tokenizer.model")
        (checkpoint / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": False}))
        out = args.out / "mixtral-spm-Q8_0.gguf"
        subprocess.run([sys.executable, str(args.llama_cpp / "src/convert_hf_to_gguf.py"), str(checkpoint), "--outfile", str(out),
                        "--outtype", "q8_0"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        port = free_port()
        server = subprocess.Popen([str(args.llama_cpp / "build/bin/llama-server"), "-m", str(out), "--host", "127.0.0.1",
                                   "--port", str(port), "-t", "2", "-c", "256", "-np", "1", "--no-warmup"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                        if r.status == 200:
                            break
                except Exception:
                    time.sleep(0.1)
            cases = []
            for text in TEXTS:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/tokenize",
                                                 data=json.dumps({"content": text, "add_special": True}).encode(),
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    llama = json.loads(response.read())["tokens"]
                reference = [sp.bos_id()] + sp.encode(text)
                if llama != reference:
                    print(f"llama.cpp and sentencepiece differ on {text!r}: {llama} vs {reference}", file=sys.stderr)
                cases.append({"text": text, "ids": llama, "sentencepiece": reference})
        finally:
            server.terminate()
            server.wait()
    (args.out / "cases.json").write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n")
    print(f"{out.name}: {out.stat().st_size} bytes, {len(cases)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
