#!/usr/bin/env python3
"""Convert a Qwen3-Next checkpoint to GGUF with llama.cpp's own converter (`convert_hf_to_gguf.py`), for the
side-by-side benchmark in docs/BENCHMARKS.md.

    /work/venv/bin/python scripts/llamacpp/convert_qwen3next.py HF_DIR OUT.gguf [--llama-cpp DIR]

The converter names a BPE pre-tokenizer by hashing the encoding of a test string, which fails for the small
Qwen2-style tokenizer fixture the benchmark model carries; its pre-tokenizer is Qwen2's, so that answer is given
here (`get_vocab_base_pre` returns "qwen2") and everything else is llama.cpp's converter unchanged.
"""

import os
import sys
from pathlib import Path


def main() -> None:
    args = sys.argv[1:]
    source = Path(os.path.expanduser("~/.cache/moe-serve-llama-cpp/src"))
    if "--llama-cpp" in args:
        i = args.index("--llama-cpp")
        source = Path(args[i + 1])
        del args[i:i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    sys.path.insert(0, str(source))
    sys.path.insert(1, str(source / "gguf-py"))
    import conversion.base as base  # noqa: E402  (llama.cpp's converter package)
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    import convert_hf_to_gguf  # noqa: E402
    # The benchmark checkpoint has no multi-token-prediction head (mtp.*): --no-mtp.
    sys.argv = ["convert_hf_to_gguf.py", args[0], "--outfile", args[1], "--outtype", "bf16", "--no-mtp"]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
