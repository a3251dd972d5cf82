#!/usr/bin/env python3
"""Reference perplexity from transformers, with the windows and scoring of `moe-serve perplexity`.

The text is encoded with the model's tokenizer.json (the `tokenizers` library, no special tokens
added), cut into non-overlapping windows of --context tokens (a trailing part shorter than a window
is dropped), and each window is run from an empty cache. Scoring `all` counts every prediction of a
window (tokens 1..N-1 from their prefixes: transformers' recipe with stride = window); `second-half`
counts only the predictions of tokens N/2+1..N-1 (llama.cpp's `llama-perplexity`).

The bundled demo model is a packed store; export it as a checkpoint first (experts dequantized to
float32, so transformers runs exactly the weights moe-serve runs):

    .build/release/moe-serve export DemoModel --out /tmp/demo-hf
    /work/venv/bin/python scripts/perplexity_reference.py --model /tmp/demo-hf \
        --text Tests/Fixtures/perplexity/py_compile.py.txt --context 512

Prints one line of JSON: perplexity, mean_nll, tokens_scored, text_tokens, windows, and versions.
"""
import argparse
import json
import math

import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a Hugging Face checkpoint directory (see `moe-serve export`)")
    p.add_argument("--text", required=True, help="UTF-8 text to score")
    p.add_argument("--context", type=int, default=512, help="tokens per window")
    p.add_argument("--scoring", choices=["all", "second-half"], default="all")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    with open(args.text, encoding="utf-8") as f:
        ids = tokenizer.encode(f.read(), add_special_tokens=False).ids
    n = args.context
    windows = len(ids) // n
    if windows == 0:
        raise SystemExit(f"error: {len(ids)} tokens, fewer than one window of {n}")
    first = 0 if args.scoring == "all" else n // 2

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    total, scored = 0.0, 0
    with torch.no_grad():
        for w in range(windows):
            window = torch.tensor([ids[w * n:(w + 1) * n]])
            logits = model(window, use_cache=False).logits[0].double()      # [n, vocab]
            logprobs = torch.log_softmax(logits[first:n - 1], dim=-1)      # position i predicts token i + 1
            targets = window[0, first + 1:n]
            total += -logprobs.gather(1, targets[:, None]).sum().item()
            scored += n - 1 - first
    mean = total / scored
    print(json.dumps({
        "perplexity": math.exp(mean), "mean_nll": mean, "scoring": args.scoring, "context": n,
        "windows": windows, "tokens_scored": scored, "text_tokens": len(ids),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }))


if __name__ == "__main__":
    main()
