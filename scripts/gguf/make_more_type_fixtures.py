#!/usr/bin/env python3
"""Make the GGUF fixtures for the tensor types no other fixture holds — Q2_K, Q5_K, BF16 and F16 —
and llama.cpp's reference next-token distributions (issue 21), with make_gguf_fixtures.py's helpers
and checkpoints (same configurations and seeds, so the same weights as its files).

    /work/venv/bin/python scripts/gguf/make_more_type_fixtures.py [--llama-cpp ~/.cache/moe-serve-llama-cpp] \
        [--out Tests/Fixtures/gguf]

Run by hand, never in CI (torch, transformers, gguf-py and a built llama.cpp).

- qwen3moe (hidden 256, so the 256-wide super-blocks apply): `llama-quantize` `Q2_K` (Q2_K experts
  with Q3_K/Q4_K/Q6_K where its rules say) and `Q5_K_M` (Q5_K with Q6_K).
- mixtral (hidden 64, small): `BF16` and `F16` — the whole model kept 16-bit, as users download
  unquantised GGUF files (llama-quantize keeps 1-D tensors in F32).

Output: `<name>-<TYPE>.gguf` and `more-types-reference.json` in the format of reference.json, read by
Tests/MoEModelsTests/GGUFLlamaCppTests.swift (`moreTypeFixtures`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_gguf_fixtures as common  # noqa: E402

# configuration name in make_gguf_fixtures.CONFIGS -> llama-quantize types
TYPES = {"qwen3moe": ["Q2_K", "Q5_K_M"], "mixtral": ["BF16", "F16"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-cpp", type=Path, default=Path.home() / ".cache/moe-serve-llama-cpp")
    parser.add_argument("--out", type=Path, default=common.ROOT / "Tests/Fixtures/gguf")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    common.quantise_and_record(TYPES, "more-types-reference.json", args.llama_cpp, args.out, args.seed)


if __name__ == "__main__":
    main()
