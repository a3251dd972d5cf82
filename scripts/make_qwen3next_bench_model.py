#!/usr/bin/env python3
"""Write a random-weight Qwen3-Next checkpoint (bf16, hub-style, per-expert tensor names) for benchmarks,
with the Qwen2 BPE tokenizer fixture beside it so that `moe-serve serve` and llama.cpp's converter accept it.

    /work/venv/bin/python scripts/make_qwen3next_bench_model.py OUT_DIR [--layers 12] [--experts 48] \
        [--linear-key-heads 8] [--linear-value-heads 16] [--linear-head-dim 64]

The default shape is Qwen3-Next-80B-A3B's layer recipe scaled down (about 1.1 GB): hidden 1024, 12 layers of which
every fourth is gated full attention (8 q / 2 kv heads of 128, rotary 0.25) and the rest gated delta-nets
(8 key heads, 16 value heads of 64, conv kernel 4), 48 experts top-8 of width 256 plus a shared expert of 256,
vocabulary 16384. `--linear-key-heads 16 --linear-value-heads 32 --linear-head-dim 128` gives the delta-nets
Qwen3-Next-80B-A3B's own head recipe (the prefill comparison of the recurrent and chunked delta rule at that width
is in docs/HTTP.md). Random weights route almost uniformly: good for throughput, not for cache hit rates.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--experts", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--linear-key-heads", type=int, default=8)
    ap.add_argument("--linear-value-heads", type=int, default=16)
    ap.add_argument("--linear-head-dim", type=int, default=64, help="key and value head width of the delta-nets")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    config = Qwen3NextConfig(
        vocab_size=16384, hidden_size=1024, num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=2,
        head_dim=128, intermediate_size=2048, moe_intermediate_size=256, shared_expert_intermediate_size=256,
        num_experts=args.experts, num_experts_per_tok=8, norm_topk_prob=True, linear_num_key_heads=args.linear_key_heads,
        linear_num_value_heads=args.linear_value_heads, linear_key_head_dim=args.linear_head_dim,
        linear_value_head_dim=args.linear_head_dim, linear_conv_kernel_dim=4,
        max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
        bos_token_id=None, eos_token_id=None)
    config.architectures = ["Qwen3NextForCausalLM"]
    model = Qwen3NextForCausalLM(config).to(torch.bfloat16).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(-3.0, 0.5))
            elif name.endswith("dt_bias"):
                p.fill_(1.0)
            elif "norm" in name and name.endswith(".weight") and "linear_attn.norm" not in name:
                p.zero_()  # Qwen3-Next's (1 + w) norms start at 0
            elif p.ndim >= 2:
                p.normal_(0.0, 0.02 if "embed" not in name else 0.5)
    if args.out.exists():
        shutil.rmtree(args.out)
    model.save_pretrained(args.out, safe_serialization=True, max_shard_size="400MB")
    # Hub style, as the published config.json: full_attention_interval, top-level rope keys.
    path = args.out / "config.json"
    cfg = json.loads(path.read_text())
    rp = cfg.pop("rope_parameters")
    cfg.pop("layer_types", None)
    cfg.update(full_attention_interval=4, rope_theta=rp["rope_theta"], partial_rotary_factor=rp["partial_rotary_factor"],
               rope_scaling=None, torch_dtype=cfg.pop("dtype", "bfloat16"))
    path.write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")
    fixtures = Path(__file__).resolve().parent.parent / "Tests" / "Fixtures" / "tokenizers" / "qwen2"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(fixtures / name, args.out / name)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters in {args.out}")


if __name__ == "__main__":
    main()
