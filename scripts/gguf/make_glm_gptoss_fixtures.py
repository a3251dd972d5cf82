#!/usr/bin/env python3
"""Make the glm4moe and gpt-oss GGUF fixtures and llama.cpp's reference next-token distributions
(issue 21), as scripts/gguf/make_gguf_fixtures.py does for the other architectures (whose helpers
it reuses: the converter call, llama-server's /completion top 5 after every prefix).

    /work/venv/bin/python scripts/gguf/make_glm_gptoss_fixtures.py [--only glm4moe|gpt-oss] \
        [--llama-cpp ~/.cache/moe-serve-llama-cpp] [--out Tests/Fixtures/gguf]

Run by hand, never in CI (torch, transformers, gguf-py and a built llama.cpp).

- glm4moe: a random-weight `Glm4MoeForCausalLM` (hidden 64, one leading dense layer, 8 routed
  experts + 1 shared, sigmoid routing with a random `e_score_correction_bias`, routed scaling 2.5,
  q/k norm and q/k/v biases, partial rotary 0.5) plus one multi-token-prediction layer appended
  by hand (`model.layers.3.*` with `eh_proj`, `enorm`, `hnorm`, `shared_head.norm`, which
  transformers does not build but GLM-4.5 checkpoints carry; llama.cpp's converter writes it as
  `blk.3` and `nextn_predict_layers` = 1, and MoEServe must skip it). The tokenizer is
  Tests/Fixtures/tokenizers/qwen2's with GLM's added tokens `[gMASK]`, `<|user|>`,
  `<|observation|>` appended (the converter's `_set_vocab_glm` looks them up). Quantised
  Q8_0 and Q4_0.
- gpt-oss: a random-weight `GptOssForCausalLM` (hidden 64, sliding window 4 on even layers,
  sinks, biases everywhere, YaRN as transformers defaults it), converted at F32 and quantised
  with `llama-quantize ... MXFP4_MOE` (experts MXFP4, the rest Q8_0).

Output: `<name>-<TYPE>.gguf` and `glm-gptoss-reference.json` in the same format as
reference.json, read by Tests/MoEModelsTests/GGUFGlmGptOssTests.swift.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_gguf_fixtures as common  # noqa: E402  (free_port, post, reference_steps, PROMPTS, TOKENIZER)

ROOT = common.ROOT
GLM_TOKENS = ["[gMASK]", "<|user|>", "<|observation|>"]

GLM = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
           n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, intermediate_size=128,
           n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=2.5,
           norm_topk_prob=True, use_qk_norm=True, attention_bias=True, num_nextn_predict_layers=1,
           partial_rotary_factor=0.5, tie_word_embeddings=False, rms_norm_eps=1e-5)

GPT_OSS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
               num_local_experts=4, num_experts_per_tok=2, intermediate_size=64, sliding_window=4,
               layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=False)

# name, HF architecture, config, quantisations (llama-quantize types).
CONFIGS = [
    ("glm4moe", "Glm4MoeForCausalLM", GLM, ["Q8_0", "Q4_0"]),
    ("gpt-oss", "GptOssForCausalLM", GPT_OSS, ["MXFP4_MOE"]),
]


def glm_tokenizer(directory: Path) -> None:
    """Tests/Fixtures/tokenizers/qwen2 with GLM's added tokens appended as special tokens."""
    data = json.loads((common.TOKENIZER / "tokenizer.json").read_text())
    next_id = max([t["id"] for t in data["added_tokens"]] + list(data["model"]["vocab"].values())) + 1
    for offset, content in enumerate(GLM_TOKENS):
        data["added_tokens"].append({"id": next_id + offset, "content": content, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True})
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    shutil.copy(common.TOKENIZER / "tokenizer_config.json", directory / "tokenizer_config.json")


def build_checkpoint(name: str, arch: str, overrides: dict, directory: Path, seed: int) -> None:
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    config_class = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    model_class = getattr(transformers, arch)
    config = config_class(vocab_size=1536, max_position_embeddings=512, rope_theta=10000.0,
                          bos_token_id=None, eos_token_id=1504, pad_token_id=0, **overrides)
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.15 if "embed" in pname or "lm_head" in pname else 0.06)
            elif "bias" in pname or "sinks" in pname:
                p.normal_(0, 0.05 if "correction" in pname else 0.1)
        for bname, b in model.named_buffers():
            if "e_score_correction_bias" in bname:
                b.normal_(0, 0.05)
    model.save_pretrained(directory, safe_serialization=True)
    if name == "glm4moe":
        glm_tokenizer(directory)
        # The multi-token-prediction layer GLM-4.5 checkpoints append (transformers builds none):
        # a copy of the last layer's weights plus its own projection and norms, at random.
        path = directory / "model.safetensors"
        tensors = load_file(path)
        last, mtp = config.num_hidden_layers - 1, config.num_hidden_layers
        for key in [k for k in tensors if k.startswith(f"model.layers.{last}.")]:
            tensors[key.replace(f"model.layers.{last}.", f"model.layers.{mtp}.")] = tensors[key].clone() * 1.1
        hidden = config.hidden_size
        tensors[f"model.layers.{mtp}.eh_proj.weight"] = torch.randn(hidden, 2 * hidden) * 0.06
        for norm in ["enorm", "hnorm", "shared_head.norm"]:
            tensors[f"model.layers.{mtp}.{norm}.weight"] = 1 + 0.1 * torch.randn(hidden)
        save_file(tensors, path, metadata={"format": "pt"})
    else:
        for f in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(common.TOKENIZER / f, directory / f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-cpp", type=Path, default=Path.home() / ".cache/moe-serve-llama-cpp")
    parser.add_argument("--out", type=Path, default=ROOT / "Tests/Fixtures/gguf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=[c[0] for c in CONFIGS])
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(common.TOKENIZER)
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in common.PROMPTS]
    banned = [i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
    args.out.mkdir(parents=True, exist_ok=True)
    reference = args.out / "glm-gptoss-reference.json"
    models = json.loads(reference.read_text())["models"] if reference.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        for number, (name, arch, overrides, types) in enumerate(CONFIGS):
            if args.only and name != args.only:
                continue
            models = [m for m in models if m["architecture"] != arch]
            checkpoint = Path(tmp) / name
            build_checkpoint(name, arch, overrides, checkpoint, args.seed + 10 + number)
            base = Path(tmp) / f"{name}-F32.gguf"
            common.convert(args.llama_cpp, checkpoint, base)
            for qtype in types:
                out = args.out / f"{name}-{qtype}.gguf"
                subprocess.run([str(args.llama_cpp / "build/bin/llama-quantize"), str(base), str(out), qtype, "2"],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                steps = common.reference_steps(args.llama_cpp, out, prompts, banned)
                models.append({"file": out.name, "architecture": arch, "type": qtype, "steps": steps})
                print(f"{out.name}: {out.stat().st_size} bytes, {len(steps)} steps", file=sys.stderr)
    reference.write_text(json.dumps({"prompts": prompts, "models": models}, indent=1) + "\n")


if __name__ == "__main__":
    main()
