#!/usr/bin/env python3
"""Make the Q3_K and IQ4_XS GGUF fixtures and llama.cpp's reference next-token distributions
(issue 21), from the qwen3moe checkpoint of scripts/gguf/make_gguf_fixtures.py (same configuration
and seed, so the same weights as qwen3moe-Q4_K_M/Q6_K/Q4_0; hidden 256 so the super-block types
apply), with that script's helpers.

    /work/venv/bin/python scripts/gguf/make_q3k_iq4xs_fixtures.py [--llama-cpp ~/.cache/moe-serve-llama-cpp] \
        [--out Tests/Fixtures/gguf]

Run by hand, never in CI (torch, transformers, gguf-py and a built llama.cpp).

`llama-quantize` Q3_K_M writes Q3_K matrices (with Q4_K/Q5_K/Q6_K and Q5_0 ones where its rules
say), IQ4_XS writes IQ4_XS matrices (with IQ4_NL where a row is not whole super-blocks).

Output: `qwen3moe-Q3_K_M.gguf`, `qwen3moe-IQ4_XS.gguf` and `q3k-iq4xs-reference.json` in the format
of reference.json, read by Tests/MoEModelsTests/GGUFLlamaCppTests.swift (`superBlockFixtures`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_gguf_fixtures as common  # noqa: E402

TYPES = ["Q3_K_M", "IQ4_XS"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-cpp", type=Path, default=Path.home() / ".cache/moe-serve-llama-cpp")
    parser.add_argument("--out", type=Path, default=common.ROOT / "Tests/Fixtures/gguf")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(common.TOKENIZER)
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in common.PROMPTS]
    banned = [i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
    args.out.mkdir(parents=True, exist_ok=True)
    # qwen3moe is make_gguf_fixtures.py's first configuration: its seed is args.seed + 0.
    number, (name, arch, overrides, _) = next((i, c) for i, c in enumerate(common.CONFIGS) if c[0] == "qwen3moe")
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / name
        common.build_checkpoint(name, arch, overrides, checkpoint, args.seed + number)
        base = Path(tmp) / f"{name}-F32.gguf"
        common.convert(args.llama_cpp, checkpoint, base)
        for qtype in TYPES:
            out = args.out / f"{name}-{qtype}.gguf"
            subprocess.run([str(args.llama_cpp / "build/bin/llama-quantize"), str(base), str(out), qtype, "2"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            steps = common.reference_steps(args.llama_cpp, out, prompts, banned)
            models.append({"file": out.name, "architecture": arch, "type": qtype, "steps": steps})
            print(f"{out.name}: {out.stat().st_size} bytes, {len(steps)} steps", file=sys.stderr)
    (args.out / "q3k-iq4xs-reference.json").write_text(json.dumps({"prompts": prompts, "models": models}, indent=1) + "\n")


if __name__ == "__main__":
    main()
