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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_gguf_fixtures as common  # noqa: E402

# configuration name in make_gguf_fixtures.CONFIGS -> llama-quantize types
TYPES = {"qwen3moe": ["Q3_K_M", "IQ4_XS"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-cpp", type=Path, default=Path.home() / ".cache/moe-serve-llama-cpp")
    parser.add_argument("--out", type=Path, default=common.ROOT / "Tests/Fixtures/gguf")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    common.quantise_and_record(TYPES, "q3k-iq4xs-reference.json", args.llama_cpp, args.out, args.seed)


if __name__ == "__main__":
    main()
