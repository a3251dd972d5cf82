#!/usr/bin/env python3
"""Reference rotary embeddings from Hugging Face `transformers` for MoEServe's RoPE tests.

Run by hand (never in CI), with torch and transformers installed:

    python scripts/make_rope_reference.py     # rewrites Tests/Fixtures/rope/reference.json

Each case is a set of config.json rope keys (hub style `rope_scaling`, or `rope_theta` and
`partial_rotary_factor` at the top level) with `head_dim` and `max_position_embeddings`; the
reference holds transformers' inverse frequencies and cos/sin scale (`_compute_yarn_parameters`
or the default), the multiplier DeepSeek's attention applies to its softmax scale
(`yarn_apply_mscale`), and one head rotated at one position in the case's layout: `rotate_half`
with partial rotation as GLM-4.5's `apply_rotary_pos_emb`, `interleaved` as DeepSeek-V2's complex
`apply_rotary_emb` (pairs (2i, 2i+1), in place).
"""

import json
from pathlib import Path

import torch
import transformers
from transformers import Glm4MoeConfig
from transformers.modeling_rope_utils import yarn_apply_mscale
from transformers.models.deepseek_v2.modeling_deepseek_v2 import apply_rotary_emb
from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeRotaryEmbedding, apply_rotary_pos_emb

CASES = [
    # DeepSeek-V3 / R1 / Kimi-K2 as published (qk_rope_head_dim 64): attention_factor 1, softmax mscale².
    dict(name="deepseek-v3-yarn", head_dim=64, max_position_embeddings=163840, layout="interleaved",
         keys={"rope_theta": 10000.0, "rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1,
               "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096}}),
    # DeepSeek-V2-Lite: mscale 0.707.
    dict(name="deepseek-v2-lite-yarn", head_dim=64, max_position_embeddings=163840, layout="interleaved",
         keys={"rope_theta": 10000.0, "rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1,
               "mscale": 0.707, "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096}}),
    # gpt-oss: truncate false, attention_factor from factor alone.
    dict(name="gpt-oss-yarn-untruncated", head_dim=64, max_position_embeddings=131072, layout="rotate_half",
         keys={"rope_theta": 150000.0, "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
               "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 4096}}),
    # YaRN with an explicit attention_factor, a null factor (max / original) and partial rotation.
    dict(name="yarn-null-factor-partial", head_dim=48, max_position_embeddings=32768, layout="rotate_half",
         keys={"rope_theta": 500000.0, "partial_rotary_factor": 0.5,
               "rope_scaling": {"rope_type": "yarn", "factor": None, "attention_factor": 1.25,
                                "original_max_position_embeddings": 8192}}),
    # GLM-4.5: default RoPE over the first half of each head.
    dict(name="glm45-partial-half", head_dim=128, max_position_embeddings=131072, layout="rotate_half",
         keys={"rope_theta": 1000000.0, "partial_rotary_factor": 0.5}),
    # Qwen3-Next: partial 0.25, new-style rope_parameters.
    dict(name="qwen3next-partial-quarter", head_dim=256, max_position_embeddings=262144, layout="rotate_half",
         keys={"rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25}}),
]

POSITION = 1234


def reference(case, gen):
    kwargs = dict(case["keys"])
    kwargs.setdefault("partial_rotary_factor", 1.0)  # Glm4MoeConfig would default to 0.5
    config = Glm4MoeConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=2, head_dim=case["head_dim"],
                           max_position_embeddings=case["max_position_embeddings"], **kwargs)
    rope = Glm4MoeRotaryEmbedding(config)
    x = torch.randn(1, 1, 1, case["head_dim"], generator=gen)
    position = torch.tensor([[POSITION]])
    if case["layout"] == "interleaved":
        freqs = position[..., None].float() * rope.inv_freq.float()
        freqs_cis = torch.polar(torch.ones_like(freqs), freqs) * rope.attention_scaling
        rotated, _ = apply_rotary_emb(x, x, freqs_cis)
    else:
        cos, sin = rope(x, position)
        rotated, _ = apply_rotary_pos_emb(x, x, cos, sin)
    return {
        "name": case["name"],
        "config_keys": case["keys"],
        "head_dim": case["head_dim"],
        "max_position_embeddings": case["max_position_embeddings"],
        "layout": case["layout"],
        "inverse_frequencies": rope.inv_freq.tolist(),
        "attention_scaling": float(rope.attention_scaling),
        "softmax_scale_multiplier": float(yarn_apply_mscale(config.rope_parameters, 1.0)),
        "position": POSITION,
        "input": x.flatten().tolist(),
        "rotated": rotated.flatten().tolist(),
    }


def main():
    gen = torch.Generator().manual_seed(0)
    out = Path(__file__).resolve().parent.parent / "Tests" / "Fixtures" / "rope" / "reference.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cases = [reference(case, gen) for case in CASES]
    document = {"transformers_version": transformers.__version__, "torch_version": torch.__version__.split("+")[0],
                "cases": cases}
    out.write_text(json.dumps(document, indent=1) + "\n")
    for c in cases:
        print(f"{c['name']:28s} rotary dims {2 * len(c['inverse_frequencies']):3d} "
              f"attention_scaling {c['attention_scaling']:.6f} softmax x{c['softmax_scale_multiplier']:.6f}")


if __name__ == "__main__":
    main()
