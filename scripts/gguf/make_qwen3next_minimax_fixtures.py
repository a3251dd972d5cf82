#!/usr/bin/env python3
"""Make the qwen3next and minimax-m2 GGUF fixtures and llama.cpp's reference next-token
distributions (issue 21), as scripts/gguf/make_gguf_fixtures.py does for the other architectures
(whose helpers it reuses: the converter call, llama-server's /completion top 5 after every prefix).

    /work/venv/bin/python scripts/gguf/make_qwen3next_minimax_fixtures.py [--only qwen3next|minimax-m2] \
        [--llama-cpp ~/.cache/moe-serve-llama-cpp] [--out Tests/Fixtures/gguf]

Run by hand, never in CI (torch, transformers, gguf-py and a built llama.cpp).

- qwen3next: a random-weight `Qwen3NextForCausalLM` (hidden 64; layers linear, linear, linear,
  full; gated delta-net with 2 key heads and 4 value heads of 16, conv kernel 4; gated full
  attention 4 q / 2 kv heads of 32 with partial rotary 0.25; 8 experts top-2 of width 32 and a
  shared expert of width 64 with its sigmoid gate), every RMSNorm weight random (so the converter's `+1` folding matters),
  plus one multi-token-prediction block appended by hand as the published checkpoints carry it
  (`mtp.layers.0.*`, `mtp.fc`, `mtp.pre_fc_norm_*`, `mtp.norm`; transformers builds none):
  the converter writes it as `blk.4` with `nextn_predict_layers` = 1 and MoEServe must skip it.
  Tokenizer: Tests/Fixtures/tokenizers/qwen2 (pre-tokenizer `qwen2`, as Qwen3-Next's GGUFs say).
  Quantised Q8_0 and Q4_0.
- qwen3next-shexp48: the same with a shared expert of width 48, quantised Q8_0: llama-quantize
  stores `ffn_down_shexp` (rows of 48, not whole blocks) as F16, which llama.cpp multiplies with
  float16-rounded activations (MoEServe's GGMLF16; a float32 product was 0.01-0.03 nats off at
  every prefix and 0.28 at some).
- minimax-m2: a random-weight `MiniMaxM2ForCausalLM` (hidden 64, 3 layers, 4 q / 2 kv heads of
  32, q/k RMSNorm over the whole projections, rotary_dim 16 of 32, 8 experts top-2 with sigmoid
  scores and a random `e_score_correction_bias`) with `rotary_dim` and `scoring_func` in its
  config.json as MiniMax-M2's has them (the converter reads both). Tokenizer:
  Tests/Fixtures/tokenizers/minimax-m2 (pre-tokenizer `minimax-m2`). Quantised Q8_0 and Q4_0.

The converter identifies a pre-tokenizer by hashing an encoding; these fixture tokenizers are new
to it, so the name is chosen in-process (the llama.cpp tree is not modified).

Output: `<name>-<TYPE>.gguf` and `qwen3next-minimax-reference.json` in the format of
reference.json, read by Tests/MoEModelsTests/GGUFQwen3NextMiniMaxTests.swift.
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
MINIMAX_TOKENIZER = ROOT / "Tests/Fixtures/tokenizers/minimax-m2"

QWEN3NEXT = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 layer_types=["linear_attention"] * 3 + ["full_attention"], full_attention_interval=4,
                 linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                 linear_conv_kernel_dim=4, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                 shared_expert_intermediate_size=64, intermediate_size=96, norm_topk_prob=True, decoder_sparse_step=1,
                 mlp_only_layers=[], attention_bias=False, rms_norm_eps=1e-6, tie_word_embeddings=False,
                 rope_parameters={"rope_theta": 10000.0, "rope_type": "default", "partial_rotary_factor": 0.25})

MINIMAX = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
               num_local_experts=8, num_experts_per_tok=2, intermediate_size=32, rms_norm_eps=1e-6,
               tie_word_embeddings=False)

# name, HF architecture, config, quantisations (llama-quantize types), pre-tokenizer, tokenizer directory.
CONFIGS = [
    ("qwen3next", "Qwen3NextForCausalLM", QWEN3NEXT, ["Q8_0", "Q4_0"], "qwen2", common.TOKENIZER),
    ("minimax-m2", "MiniMaxM2ForCausalLM", MINIMAX, ["Q8_0", "Q4_0"], "minimax-m2", MINIMAX_TOKENIZER),
    # A shared expert of width 48: its ffn_down_shexp rows (48 wide) are not whole blocks, so
    # llama-quantize stores that matrix as F16, which llama.cpp multiplies with float16 activations
    # (GGMLF16). Added after the two above; their seeds do not change.
    ("qwen3next-shexp48", "Qwen3NextForCausalLM", {**QWEN3NEXT, "shared_expert_intermediate_size": 48}, ["Q8_0"], "qwen2",
     common.TOKENIZER),
]


def convert(llama: Path, checkpoint: Path, out: Path, pre: str) -> None:
    """llama.cpp's converter at F32 with the pre-tokenizer name `pre`."""
    code = f"""
import sys
sys.path.insert(0, {str(llama / 'src')!r})
sys.argv = ['convert_hf_to_gguf.py', {str(checkpoint)!r}, '--outfile', {str(out)!r}, '--outtype', 'f32']
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=llama / "src", stdout=subprocess.DEVNULL)


def build_checkpoint(name: str, arch: str, overrides: dict, directory: Path, seed: int, vocab: int, eos: int) -> None:
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    config_class = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    model_class = getattr(transformers, arch)
    extra = {} if "rope_parameters" in overrides else {"rope_theta": 10000.0}
    config = config_class(vocab_size=vocab, max_position_embeddings=512, bos_token_id=None, eos_token_id=eos,
                          pad_token_id=0, **extra, **overrides)
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "conv1d" in pname:
                p.normal_(0, 0.3)
            elif p.dim() >= 2:
                p.normal_(0, 0.15 if "embed" in pname or "lm_head" in pname else 0.06)
            elif "norm" in pname:
                # Qwen3-Next scales by 1 + w (zeros at init), the others by w (ones): random either way.
                p.normal_(0 if name.startswith("qwen3next") and not pname.endswith("linear_attn.norm.weight") else 1, 0.1)
            elif "correction" in pname:
                p.normal_(0, 0.05)
        for bname, b in model.named_buffers():
            if "e_score_correction_bias" in bname:
                b.normal_(0, 0.05)
    model.save_pretrained(directory, safe_serialization=True)
    path = directory / "model.safetensors"
    if name.startswith("qwen3next"):
        # The multi-token-prediction block the published checkpoints carry (transformers builds none):
        # a copy of the last (full-attention) layer's weights plus its own projection and norms, at random.
        tensors = load_file(path)
        last = config.num_hidden_layers - 1
        for key in [k for k in tensors if k.startswith(f"model.layers.{last}.")]:
            tensors[key.replace(f"model.layers.{last}.", "mtp.layers.0.")] = tensors[key].clone() * 1.1
        hidden = config.hidden_size
        tensors["mtp.fc.weight"] = torch.randn(hidden, 2 * hidden) * 0.06
        for norm in ["pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"]:
            tensors[f"mtp.{norm}.weight"] = 0.1 * torch.randn(hidden)
        save_file(tensors, path, metadata={"format": "pt"})
    else:
        # MiniMax-M2's config.json says rotary_dim and scoring_func (the converter reads both).
        cfg = json.loads((directory / "config.json").read_text())
        cfg["rotary_dim"] = cfg["head_dim"] // 2
        cfg["scoring_func"] = "sigmoid"
        cfg["use_routing_bias"] = True
        (directory / "config.json").write_text(json.dumps(cfg, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-cpp", type=Path, default=Path.home() / ".cache/moe-serve-llama-cpp")
    parser.add_argument("--out", type=Path, default=ROOT / "Tests/Fixtures/gguf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=[c[0] for c in CONFIGS])
    args = parser.parse_args()
    from transformers import AutoTokenizer

    args.out.mkdir(parents=True, exist_ok=True)
    reference = args.out / "qwen3next-minimax-reference.json"
    existing = json.loads(reference.read_text()) if reference.exists() else {"prompts": {}, "models": []}
    prompts_by_tokenizer: dict = existing["prompts"]
    models = existing["models"]
    with tempfile.TemporaryDirectory() as tmp:
        for number, (name, arch, overrides, types, pre, tokenizer_dir) in enumerate(CONFIGS):
            if args.only and name != args.only:
                continue
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            prompts = [tokenizer.encode(p, add_special_tokens=False) for p in common.PROMPTS]
            banned = [i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
            prompts_by_tokenizer[name] = prompts
            models = [m for m in models if m["prompts"] != name]
            checkpoint = Path(tmp) / name
            checkpoint.mkdir()
            for f in ["tokenizer.json", "tokenizer_config.json"]:
                shutil.copy(tokenizer_dir / f, checkpoint / f)
            vocab = (len(tokenizer) + 63) // 64 * 64
            build_checkpoint(name, arch, overrides, checkpoint, args.seed + 20 + number, vocab, tokenizer.eos_token_id)
            base = Path(tmp) / f"{name}-F32.gguf"
            convert(args.llama_cpp, checkpoint, base, pre)
            for qtype in types:
                out = args.out / f"{name}-{qtype}.gguf"
                subprocess.run([str(args.llama_cpp / "build/bin/llama-quantize"), str(base), str(out), qtype, "2"],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                steps = common.reference_steps(args.llama_cpp, out, prompts, banned)
                models.append({"file": out.name, "architecture": arch, "type": qtype, "prompts": name, "steps": steps})
                print(f"{out.name}: {out.stat().st_size} bytes, {len(steps)} steps", file=sys.stderr)
    reference.write_text(json.dumps({"prompts": prompts_by_tokenizer, "models": models}, indent=1) + "\n")


if __name__ == "__main__":
    main()
