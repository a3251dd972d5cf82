#!/usr/bin/env python3
"""Convert a gpt-oss checkpoint (MXFP4 experts as published) to GGUF with llama.cpp's own converter
(`convert_hf_to_gguf.py`), keeping the experts in MXFP4, for the side-by-side benchmark in docs/BENCHMARKS.md.

    /work/venv/bin/python scripts/llamacpp/convert_gpt_oss.py HF_DIR OUT.gguf [--llama-cpp DIR]

The synthetic checkpoints (`moe-serve synth --shape gpt-oss-20b`) carry the demo model's small Qwen2-style BPE
tokenizer, whose pre-tokenizer the converter cannot name by its hash of a test string; its pre-tokenizer is
Qwen2's, so that answer is given here (`get_vocab_base_pre` returns "qwen2"). Everything else is llama.cpp's
converter unchanged: `GptOssModel` repacks `*_blocks` / `*_scales` into GGML's MXFP4 type (file type
MOSTLY_MXFP4_MOE) and the other weights are written as bf16 (`--outtype bf16`, the checkpoint's own type).
"""

import json
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
    # transformers' GptOssConfig is a strict dataclass whose swiglu_limit must be a float; JSON writers that print
    # 7.0 as 7 (Foundation's, which `synth` uses) make it an int, so the value is written back as a float.
    config_path = Path(args[0]) / "config.json"
    config = json.loads(config_path.read_text())
    floats = {k: float(config[k]) for k in ("swiglu_limit", "rope_theta") if isinstance(config.get(k), int)}
    if floats:
        config.update(floats)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    sys.path.insert(0, str(source))
    sys.path.insert(1, str(source / "gguf-py"))
    import conversion.base as base  # noqa: E402  (llama.cpp's converter package)
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    import convert_hf_to_gguf  # noqa: E402
    sys.argv = ["convert_hf_to_gguf.py", args[0], "--outfile", args[1], "--outtype", "bf16"]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
