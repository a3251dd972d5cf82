#!/usr/bin/env python3
"""Build tiny random Mixture-of-Experts checkpoints with Hugging Face `transformers` and write
reference outputs for MoEServe's fidelity tests.

Run by hand (never in CI). Needs torch, transformers, safetensors:

    python scripts/make_reference_models.py                      # regenerate Tests/Fixtures/models
    python scripts/make_reference_models.py --out /tmp/unseen --seed 7
    python scripts/make_reference_models.py --out /tmp/fuzz --seed 3 --variant --count 2

Each checkpoint directory holds a real Hugging Face checkpoint (config.json, bf16 safetensors, sharded
for some, generation_config.json) and `reference.json`:

    {"architecture": ..., "prompt": [...], "logits": [[...vocab...] per prompt position],
     "greedy": [...8 new tokens...], "notes": "...", ...extra diagnostic fields...}

References are computed in float32 from the saved bf16 weights (the checkpoint is loaded back from
disk with dtype=float32, eager attention, eval mode). The greedy continuation comes from
`generate(do_sample=False)` (KV cache) and is checked against a no-cache argmax loop. Prompts are
re-drawn until every router top-k decision and every greedy argmax has a clear margin, so that an
implementation that is correct to ~1e-5 cannot flip a choice by rounding.

See Tests/Fixtures/models/README.md for what each fixture covers and the semantics to match.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from transformers import (
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    GenerationConfig,
    Glm4MoeConfig,
    Glm4MoeForCausalLM,
    MiniMaxM2Config,
    MiniMaxM2ForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

ARCHS = {
    "MixtralForCausalLM": (MixtralConfig, MixtralForCausalLM),
    "Qwen2MoeForCausalLM": (Qwen2MoeConfig, Qwen2MoeForCausalLM),
    "Qwen3MoeForCausalLM": (Qwen3MoeConfig, Qwen3MoeForCausalLM),
    "OlmoeForCausalLM": (OlmoeConfig, OlmoeForCausalLM),
    "DeepseekV2ForCausalLM": (DeepseekV2Config, DeepseekV2ForCausalLM),
    "DeepseekV3ForCausalLM": (DeepseekV3Config, DeepseekV3ForCausalLM),
    "Glm4MoeForCausalLM": (Glm4MoeConfig, Glm4MoeForCausalLM),
    "MiniMaxM2ForCausalLM": (MiniMaxM2Config, MiniMaxM2ForCausalLM),
}
# --variant draws configurations of these (the others have fixed committed configurations only).
VARIANT_ARCHS = ["MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "OlmoeForCausalLM",
                 "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "Glm4MoeForCausalLM", "MiniMaxM2ForCausalLM"]
# Routers whose choice is made on scores (sigmoid + correction bias, groups), not on raw logits:
# their margins are measured on what they compare, and must clear MIN_SCORE_MARGIN.
SCORE_ROUTED = {"DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "Glm4MoeForCausalLM", "MiniMaxM2ForCausalLM"}

PROMPT_LEN = 12
GREEDY_TOKENS = 8
# A Swift forward pass in f32 from the same bf16 weights differs from torch by ~1e-5; these margins
# make sure such a difference can never change a router's top-k set or a greedy argmax.
MIN_ROUTER_MARGIN = 2e-3  # gap between the k-th and (k+1)-th router logit, every token, every layer
MIN_SCORE_MARGIN = 5e-4  # the same on (sigmoid or softmax) scores + bias, and between group scores
MIN_GREEDY_MARGIN = 2e-2  # gap between the best and second-best logit at every greedy step
PROMPTS_PER_DRAW = 60
WEIGHT_DRAWS = 4


@dataclass
class Fixture:
    name: str
    arch: str
    config: dict
    covers: str
    config_style: str = "hub"  # "hub": rope_theta + torch_dtype; "new": rope_parameters + dtype
    sharded: bool = False
    extra: dict = field(default_factory=dict)
    rope_scaling: dict | None = None  # hub-style rope_scaling ({"type": "yarn", ...}) as published
    fp32_router: bool = False  # router weight and correction bias stored as F32 (as DeepSeek-V3 ships them)


def base(vocab, hidden, layers, heads, kv, theta, eps=1e-6, tie=False):
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=128,
        rope_theta=theta,
        rms_norm_eps=eps,
        tie_word_embeddings=tie,
        hidden_act="silu",
        attention_dropout=0.0,
    )


def committed_fixtures() -> list[Fixture]:
    """The fixtures committed under Tests/Fixtures/models (generated with --seed 0)."""
    fx = []

    # ---- Mixtral -------------------------------------------------------------------------------
    c = base(131, 64, 2, 8, 2, 1e6, eps=1e-5)
    c.update(num_local_experts=8, num_experts_per_tok=2, intermediate_size=32, sliding_window=None,
             bos_token_id=1, eos_token_id=2)
    fx.append(Fixture("mixtral-gqa-top2", "MixtralForCausalLM", c,
                      "GQA 8q/2kv heads, 8 experts top-2, vocab 131, untied, rope_theta 1e6, eps 1e-5, "
                      "single model.safetensors, hub-style config", "hub", False))

    c = base(97, 32, 3, 4, 4, 10000.0, eps=1e-6, tie=True)
    c.update(num_local_experts=4, num_experts_per_tok=1, intermediate_size=48, sliding_window=None)
    fx.append(Fixture("mixtral-top1-tied-sharded", "MixtralForCausalLM", c,
                      "MHA (kv=q heads), 4 experts top-1 (Mixtral renormalises => weight 1.0), vocab 97, "
                      "tied embeddings (no lm_head.weight in the checkpoint), 3 layers, sharded, new-style config",
                      "new", True))

    c = base(257, 48, 2, 6, 3, 500000.0, eps=1e-5)
    c.update(num_local_experts=4, num_experts_per_tok=4, intermediate_size=16, sliding_window=None)
    fx.append(Fixture("mixtral-top4-allexperts", "MixtralForCausalLM", c,
                      "top-4 of 4 experts (every expert used, weights = full softmax), GQA 6q/3kv, vocab 257, "
                      "rope_theta 5e5, hub-style config", "hub", False))

    # ---- Qwen2-MoE ------------------------------------------------------------------------------
    c = base(257, 48, 2, 6, 2, 1e6, eps=1e-6)
    c.update(num_experts=8, num_experts_per_tok=4, moe_intermediate_size=16, shared_expert_intermediate_size=40,
             intermediate_size=64, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
             eos_token_id=[0, 256])
    fx.append(Fixture("qwen2moe-shared-top4-norm", "Qwen2MoeForCausalLM", c,
                      "shared expert (width 40) with sigmoid gate, 8 experts top-4, norm_topk_prob=true, "
                      "GQA 6q/2kv, q/k/v bias, vocab 257, untied, sharded, hub-style config", "hub", True))

    c = base(131, 32, 3, 4, 2, 10000.0, eps=1e-5, tie=True)
    c.update(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=0,
             intermediate_size=40, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1])
    fx.append(Fixture("qwen2moe-noshared-mlponly", "Qwen2MoeForCausalLM", c,
                      "shared_expert_intermediate_size=0 (zero-size shared-expert tensors, contributes 0), "
                      "mlp_only_layers=[1] (layer 1 is a dense MLP of width 40), norm_topk_prob=false, "
                      "tied, GQA 4q/2kv, vocab 131, new-style config", "new", False))

    c = base(97, 64, 3, 4, 1, 1e6, eps=1e-6)
    c.update(num_experts=4, num_experts_per_tok=3, moe_intermediate_size=32, shared_expert_intermediate_size=48,
             intermediate_size=96, norm_topk_prob=False, decoder_sparse_step=2, mlp_only_layers=[])
    fx.append(Fixture("qwen2moe-shared-sparse-step", "Qwen2MoeForCausalLM", c,
                      "decoder_sparse_step=2 (only layer 1 is MoE; layers 0 and 2 dense width 96), "
                      "shared expert width 48, top-3 of 4, norm_topk_prob=false, MQA (1 kv head), vocab 97, "
                      "hub-style config", "hub", False))

    # ---- Qwen3-MoE ------------------------------------------------------------------------------
    c = base(131, 32, 2, 4, 2, 1e6, eps=1e-6)
    c.update(head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24, intermediate_size=48,
             norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], attention_bias=False)
    fx.append(Fixture("qwen3moe-headdim", "Qwen3MoeForCausalLM", c,
                      "head_dim=16 with hidden 32 / 4 heads (q_proj out 64 != hidden), per-head q/k RMSNorm, "
                      "GQA 4q/2kv, 8 experts top-2, norm_topk_prob=true, vocab 131, untied, sharded, "
                      "hub-style config", "hub", True))

    c = base(257, 64, 3, 4, 4, 10000.0, eps=1e-5, tie=True)
    c.update(head_dim=12, num_experts=6, num_experts_per_tok=3, moe_intermediate_size=16, intermediate_size=32,
             norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[0], attention_bias=False)
    fx.append(Fixture("qwen3moe-tied-mlponly-top3", "Qwen3MoeForCausalLM", c,
                      "head_dim=12 (q_proj out 48 < hidden 64), mlp_only_layers=[0] (dense width 32), "
                      "6 experts top-3, norm_topk_prob=false, tied, MHA, vocab 257, rms_norm_eps 1e-5, "
                      "new-style config", "new", False))

    # ---- OLMoE ----------------------------------------------------------------------------------
    c = base(97, 32, 2, 4, 2, 10000.0, eps=1e-5)
    c.update(num_experts=8, num_experts_per_tok=2, intermediate_size=24, norm_topk_prob=False, clip_qkv=0.6,
             attention_bias=False, pad_token_id=1, eos_token_id=96)
    fx.append(Fixture("olmoe-clipqkv", "OlmoeForCausalLM", c,
                      "clip_qkv=0.6 (clamps many q/k/v values, after q/k norm), GQA 4q/2kv (k_norm width = "
                      "kv*head_dim = 16), 8 experts top-2, norm_topk_prob=false, vocab 97, untied, sharded, "
                      "hub-style config", "hub", True))

    c = base(131, 48, 3, 4, 4, 1e6, eps=1e-6, tie=True)
    c.update(num_experts=6, num_experts_per_tok=4, intermediate_size=32, norm_topk_prob=True, clip_qkv=None,
             attention_bias=False, pad_token_id=None)
    fx.append(Fixture("olmoe-noclip-top4-norm", "OlmoeForCausalLM", c,
                      "no clip_qkv, 6 experts top-4, norm_topk_prob=true, tied, MHA, 3 layers, vocab 131, "
                      "rope_theta 1e6, new-style config", "new", False))
    fx += deepseek_family_fixtures()
    return fx


# Published rope_scaling of DeepSeek-V3/R1 and of DeepSeek-V2-Lite.
V3_YARN = {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
           "original_max_position_embeddings": 4096}
V2_LITE_YARN = {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707,
                "original_max_position_embeddings": 4096}


def deepseek_family_fixtures() -> list[Fixture]:
    """DeepSeek-V2/V3, GLM-4.5 MoE and MiniMax-M2 (issue 20)."""
    fx = []
    # ---- DeepSeek-V3 ----------------------------------------------------------------------------
    c = base(131, 64, 3, 4, 4, 10000.0, eps=1e-6)
    c.update(max_position_embeddings=163840, q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
             v_head_dim=12, n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=3, n_shared_experts=1,
             moe_intermediate_size=16, intermediate_size=48, first_k_dense_replace=1, routed_scaling_factor=2.5,
             norm_topk_prob=True, rope_interleave=True, num_nextn_predict_layers=0, bos_token_id=0, eos_token_id=1)
    fx.append(Fixture("deepseekv3-qlora-groups-yarn", "DeepseekV3ForCausalLM", c,
                      "MLA with q_lora_rank 24, kv_lora_rank 32, qk_nope 16 / qk_rope 8 / v_head 12, interleaved RoPE, "
                      "YaRN as published (factor 40, mscale 1 = mscale_all_dim: softmax scale x mscale^2), sigmoid routing "
                      "with e_score_correction_bias, 4 groups keep 2 (top-2 sum), top-3 of 8, 1 shared expert, "
                      "first_k_dense_replace 1, routed_scaling_factor 2.5, router weight and bias F32, untied, sharded, "
                      "hub-style config", "hub", True, rope_scaling=V3_YARN, fp32_router=True))
    c = base(97, 48, 2, 4, 4, 10000.0, eps=1e-6, tie=True)
    c.update(q_lora_rank=None, kv_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16,
             n_routed_experts=6, n_group=1, topk_group=1, num_experts_per_tok=2, n_shared_experts=2,
             moe_intermediate_size=16, intermediate_size=32, first_k_dense_replace=0, routed_scaling_factor=1.0,
             norm_topk_prob=False, rope_interleave=False, num_nextn_predict_layers=0)
    fx.append(Fixture("deepseekv3-noqlora-2shared-tied", "DeepseekV3ForCausalLM", c,
                      "MLA without query compression (q_proj), rope_interleave false, default RoPE, no groups (n_group 1), "
                      "top-2 of 6, 2 shared experts (one MLP of width 32), every layer MoE, norm_topk_prob false, "
                      "scaling 1.0, tied, new-style config", "new", False))
    # ---- DeepSeek-V2 ----------------------------------------------------------------------------
    c = base(131, 48, 3, 4, 4, 10000.0, eps=1e-6)
    c.update(max_position_embeddings=163840, q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
             v_head_dim=16, n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=2, moe_intermediate_size=12,
             intermediate_size=40, first_k_dense_replace=1, topk_method="greedy", n_group=1, topk_group=1,
             routed_scaling_factor=1.0, norm_topk_prob=False, bos_token_id=0, eos_token_id=1)
    fx.append(Fixture("deepseekv2-lite-yarn", "DeepseekV2ForCausalLM", c,
                      "V2-Lite's shape in small: MLA without query compression, YaRN as published for V2-Lite (mscale "
                      "0.707), softmax routing greedy top-3 of 8, 2 shared experts, first layer dense, sharded, "
                      "hub-style config", "hub", True, rope_scaling=V2_LITE_YARN))
    c = base(97, 32, 2, 2, 2, 10000.0, eps=1e-6, tie=True)
    c.update(q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
             n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=16,
             intermediate_size=32, first_k_dense_replace=0, topk_method="group_limited_greedy", n_group=4, topk_group=2,
             routed_scaling_factor=16.0, norm_topk_prob=False)
    fx.append(Fixture("deepseekv2-qlora-grouped", "DeepseekV2ForCausalLM", c,
                      "MLA with q_lora_rank 16, group_limited_greedy (4 groups by their best expert, keep 2), top-2 of 8, "
                      "routed_scaling_factor 16 (as V2), 1 shared expert, tied, new-style config", "new", False))
    # ---- GLM-4.5 MoE ----------------------------------------------------------------------------
    c = base(131, 64, 3, 4, 2, 1e6, eps=1e-5)
    c.update(head_dim=16, partial_rotary_factor=0.5, use_qk_norm=True, attention_bias=True, n_routed_experts=8,
             num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=16, intermediate_size=48,
             first_k_dense_replace=1, n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5,
             num_nextn_predict_layers=0)
    fx.append(Fixture("glm4moe-partial-qknorm-bias", "Glm4MoeForCausalLM", c,
                      "partial_rotary_factor 0.5 (8 of 16 dims rotate), per-head q/k norm (use_qk_norm), q/k/v biases, "
                      "sigmoid routing with correction bias, top-2 of 8, 1 shared expert, first layer dense, "
                      "routed_scaling_factor 2.5, GQA 4q/2kv, sharded, hub-style config", "hub", True))
    c = base(97, 48, 2, 4, 4, 10000.0, eps=1e-6, tie=True)
    c.update(use_qk_norm=False, attention_bias=False, n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=1,
             moe_intermediate_size=16, intermediate_size=32, first_k_dense_replace=0, n_group=2, topk_group=1,
             norm_topk_prob=False, routed_scaling_factor=1.0, num_nextn_predict_layers=0)
    fx.append(Fixture("glm4moe-groups-tied", "Glm4MoeForCausalLM", c,
                      "no q/k norm, no biases, partial_rotary_factor absent (GLM's default 0.5), 2 groups keep 1, "
                      "top-3 of 8, norm_topk_prob false, tied, every layer MoE, new-style config", "new", False,
                      extra={"drop_partial": True}))
    # ---- MiniMax-M2 -----------------------------------------------------------------------------
    c = base(131, 64, 2, 4, 2, 5e6, eps=1e-6)
    c.update(head_dim=16, rotary_dim=8, num_local_experts=8, num_experts_per_tok=2, intermediate_size=24)
    fx.append(Fixture("minimaxm2-rotarydim", "MiniMaxM2ForCausalLM", c,
                      "rotary_dim 8 of head_dim 16 (as released), q/k RMSNorm over whole projections, sigmoid routing with "
                      "correction bias, always renormalised, top-2 of 8, GQA 4q/2kv, sharded, hub-style config",
                      "hub", True))
    c = base(97, 32, 3, 4, 1, 1e6, eps=1e-5, tie=True)
    c.update(head_dim=8, num_local_experts=6, num_experts_per_tok=3, intermediate_size=16)
    fx.append(Fixture("minimaxm2-fullrotary-tied", "MiniMaxM2ForCausalLM", c,
                      "full rotary (no rotary_dim), top-3 of 6, MQA, tied, 3 layers, new-style config", "new", False))
    return fx


def variant_fixtures(seed: int, count: int) -> list[Fixture]:
    """Random configurations for fuzz-style unseen checks (--variant)."""
    rng = random.Random(seed * 7919 + 17)
    out = []
    for i in range(count):
        for arch in VARIANT_ARCHS:
            hidden = rng.choice([32, 48, 64])
            heads = rng.choice([h for h in (2, 4, 6, 8) if hidden % h == 0 and (hidden // h) % 2 == 0])
            kv = rng.choice([k for k in range(1, heads + 1) if heads % k == 0])
            layers = rng.choice([2, 3])
            experts = rng.randint(4, 8)
            topk = rng.randint(1, min(4, experts))
            vocab = rng.choice([67, 97, 101, 131, 173, 211, 257, 263])
            c = base(vocab, hidden, layers, heads, kv, rng.choice([10000.0, 500000.0, 1e6]),
                     eps=rng.choice([1e-5, 1e-6]), tie=rng.random() < 0.5)
            desc = [f"hidden {hidden}", f"{heads}q/{kv}kv", f"{layers} layers", f"{experts} experts top-{topk}",
                    f"vocab {vocab}", "tied" if c["tie_word_embeddings"] else "untied"]
            width = rng.choice([16, 24, 32, 40, 48])
            rope_scaling = None
            if arch in SCORE_ROUTED:
                rope_scaling = deepseek_family_variant(arch, rng, c, experts, width, heads, desc)
            elif arch == "MixtralForCausalLM":
                c.update(num_local_experts=experts, num_experts_per_tok=topk, intermediate_size=width,
                         sliding_window=None)
            else:
                c.update(num_experts=experts, num_experts_per_tok=topk, norm_topk_prob=rng.random() < 0.5)
                desc.append(f"norm_topk_prob={c['norm_topk_prob']}")
            if arch in ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
                step = rng.choice([1, 1, 2])
                mlp_only = sorted(rng.sample(range(layers), rng.choice([0, 0, 1])))
                c.update(moe_intermediate_size=width, intermediate_size=rng.choice([32, 48, 64]),
                         decoder_sparse_step=step, mlp_only_layers=mlp_only)
                desc.append(f"sparse_step={step} mlp_only={mlp_only}")
            if arch == "Qwen2MoeForCausalLM":
                c["shared_expert_intermediate_size"] = rng.choice([0, 16, 32, 48])
                desc.append(f"shared={c['shared_expert_intermediate_size']}")
            if arch == "Qwen3MoeForCausalLM":
                c["head_dim"] = rng.choice([8, 12, 16, 24])
                c["attention_bias"] = False
                desc.append(f"head_dim={c['head_dim']}")
            if arch == "OlmoeForCausalLM":
                c.update(intermediate_size=width, attention_bias=False, pad_token_id=None,
                         clip_qkv=rng.choice([None, 0.5, 1.0, 2.0]))
                desc.append(f"clip_qkv={c['clip_qkv']}")
            style = rng.choice(["hub", "new"])
            sharded = rng.random() < 0.5
            short = {"MixtralForCausalLM": "mixtral", "Qwen2MoeForCausalLM": "qwen2moe",
                     "Qwen3MoeForCausalLM": "qwen3moe", "OlmoeForCausalLM": "olmoe", "DeepseekV2ForCausalLM": "deepseekv2",
                     "DeepseekV3ForCausalLM": "deepseekv3", "Glm4MoeForCausalLM": "glm4moe",
                     "MiniMaxM2ForCausalLM": "minimaxm2"}[arch]
            out.append(Fixture(f"variant-{short}-s{seed}-{i}", arch, c, ", ".join(desc), style, sharded,
                               rope_scaling=rope_scaling))
    return out


def deepseek_family_variant(arch, rng, c, experts, width, heads, desc):
    """Random keys of DeepSeek-V2/V3, GLM-4.5 and MiniMax-M2 into `c`; returns a rope_scaling or None."""
    experts = rng.choice([4, 6, 8])
    groups = rng.choice([g for g in (1, 2, 4) if experts % g == 0 and experts // g >= 2])
    keep = rng.randint(1, groups)
    topk = rng.randint(1, min(4, keep * experts // groups))
    c.update(num_experts_per_tok=topk)
    desc[3] = f"{experts} experts top-{topk}"
    rope_scaling = None
    if arch in ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"):
        c["num_key_value_heads"] = heads
        c.update(q_lora_rank=rng.choice([None, 16, 24]), kv_lora_rank=rng.choice([16, 24, 32]),
                 qk_nope_head_dim=rng.choice([8, 16]), qk_rope_head_dim=rng.choice([4, 8]), v_head_dim=rng.choice([8, 12, 16]),
                 n_routed_experts=experts, n_shared_experts=rng.choice([1, 2]), moe_intermediate_size=width,
                 intermediate_size=rng.choice([32, 48]), first_k_dense_replace=rng.choice([0, 1]),
                 routed_scaling_factor=rng.choice([1.0, 2.5]), n_group=groups, topk_group=keep)
        if rng.random() < 0.5:
            rope_scaling = dict(V3_YARN if arch == "DeepseekV3ForCausalLM" else V2_LITE_YARN)
            c["max_position_embeddings"] = 163840
        if arch == "DeepseekV3ForCausalLM":
            c.update(norm_topk_prob=rng.random() < 0.5, rope_interleave=rng.random() < 0.5, num_nextn_predict_layers=0)
        else:
            c.update(topk_method="group_limited_greedy" if groups > 1 else "greedy", norm_topk_prob=False)
        desc.append(f"q_lora={c['q_lora_rank']} kv_lora={c['kv_lora_rank']} groups {groups}/{keep} "
                    f"shared {c['n_shared_experts']} dense {c['first_k_dense_replace']} yarn={rope_scaling is not None}")
    elif arch == "Glm4MoeForCausalLM":
        c.update(head_dim=rng.choice([8, 16]), partial_rotary_factor=rng.choice([0.5, 0.25, 1.0]),
                 use_qk_norm=rng.random() < 0.5, attention_bias=rng.random() < 0.5, n_routed_experts=experts,
                 n_shared_experts=rng.choice([1, 2]), moe_intermediate_size=width, intermediate_size=rng.choice([32, 48]),
                 first_k_dense_replace=rng.choice([0, 1]), n_group=groups, topk_group=keep,
                 norm_topk_prob=rng.random() < 0.5, routed_scaling_factor=rng.choice([1.0, 2.5]), num_nextn_predict_layers=0)
        desc.append(f"head_dim {c['head_dim']} partial {c['partial_rotary_factor']} qk_norm={c['use_qk_norm']} "
                    f"bias={c['attention_bias']} groups {groups}/{keep}")
    else:  # MiniMax-M2
        head_dim = rng.choice([8, 16])
        c.update(head_dim=head_dim, rotary_dim=rng.choice([head_dim // 2, head_dim]), num_local_experts=experts,
                 intermediate_size=width)
        desc.append(f"head_dim {head_dim} rotary_dim {c['rotary_dim']}")
    return rope_scaling


def stable_seed(*parts) -> int:
    return zlib.crc32(":".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


@torch.no_grad()
def reinit(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Larger-than-default random init so routing and logits are far from uniform."""
    for name, p in model.named_parameters():  # tied parameters appear once
        if p.numel() == 0:
            continue
        if name.endswith("norm.weight"):  # input/post-attention/final norms, q_norm, k_norm
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
        elif name.endswith(".bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        elif name.endswith("embed_tokens.weight"):
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        elif name.endswith("mlp.gate.weight"):  # routers
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        elif name.endswith("shared_expert_gate.weight"):
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        elif name == "lm_head.weight":
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        else:  # attention projections, dense MLPs, routed experts (3-D in transformers 5)
            p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):  # a buffer, zero at init: make it matter
            b.copy_(0.2 * torch.randn(b.shape, generator=gen))


def restyle_config(path: Path, style: str, drop_partial: bool = False) -> None:
    """Rewrite config.json in the hub style (top-level rope_theta, torch_dtype) or the newer style
    (rope_parameters, dtype), whatever the installed transformers wrote."""
    cfg = json.loads(path.read_text())
    rp = dict(cfg.pop("rope_parameters", None) or {})
    theta = rp.pop("rope_theta", None)
    kind = rp.pop("rope_type", rp.pop("type", "default"))
    rp.pop("type", None)
    partial = rp.pop("partial_rotary_factor", None)
    cfg.pop("partial_rotary_factor", None)
    if cfg.get("model_type") == "minimax_m2" and "rotary_dim" in cfg:
        partial = None  # released MiniMax-M2 configs say rotary_dim only
    if drop_partial:
        partial = None  # the loader must apply the architecture's default (GLM-4.5: 0.5)
    theta = cfg.pop("rope_theta", theta)
    cfg.pop("rope_scaling", None)
    dtype = cfg.pop("dtype", None) or cfg.pop("torch_dtype", None)
    cfg.pop("torch_dtype", None)
    assert theta is not None and dtype == "bfloat16", (theta, dtype)
    if style == "hub":
        # Look like a config written by transformers 4.x and found on the hub: no keys that only
        # transformers 5 writes (the loader must apply the same defaults transformers does).
        for k in ("layer_types", "qkv_bias"):
            cfg.pop(k, None)
        if cfg.get("head_dim", 0) is None:
            del cfg["head_dim"]
        # transformers 5 writes Qwen3-MoE's expert count as num_local_experts; hub configs say num_experts
        if cfg.get("model_type") == "qwen3_moe" and "num_local_experts" in cfg:
            cfg["num_experts"] = cfg.pop("num_local_experts")
        if cfg.get("model_type") in ("deepseek_v2", "deepseek_v3"):
            for k in ("head_dim", "qk_head_dim"):  # published DeepSeek configs have neither
                cfg.pop(k, None)
        cfg["rope_theta"] = theta
        cfg["rope_scaling"] = {"type": kind, **rp} if kind != "default" else None
        if partial is not None:
            cfg["partial_rotary_factor"] = partial
        cfg["torch_dtype"] = dtype
    else:
        cfg["rope_parameters"] = {"rope_theta": theta, "rope_type": kind, **rp}
        if partial is not None:
            cfg["rope_parameters"]["partial_rotary_factor"] = partial
        cfg["dtype"] = dtype
    path.write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")


def load_kwargs_f32():
    return {"dtype": torch.float32, "attn_implementation": "eager"}


def checkpoint_tensors(d: Path) -> dict[str, tuple[str, list[int], str]]:
    """name -> (dtype, shape, file) read straight from the safetensors headers."""
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                out[k] = (v["dtype"], v["shape"], f.name)
    return out


def sig6(x: float) -> float:
    return float(f"{x:.6g}")


def router_margins(model, ids: torch.Tensor, topk: int) -> tuple[float, list]:
    """Smallest gap between the k-th and (k+1)-th router logit over all tokens and MoE layers."""
    out = model(ids, output_router_logits=True, use_cache=False)
    rl = out.router_logits
    assert rl is not None and len(rl) > 0
    margin = math.inf
    for layer_logits in rl:
        ll = layer_logits.reshape(-1, layer_logits.shape[-1]).float()
        if topk < ll.shape[-1]:
            s = torch.sort(ll, dim=-1, descending=True).values
            margin = min(margin, float((s[:, topk - 1] - s[:, topk]).min()))
    return margin, rl


def score_margins(model, ids: torch.Tensor, config) -> float:
    """For routers that choose on scores (SCORE_ROUTED): the smallest gap, over all tokens and MoE
    layers, between the k-th and (k+1)-th eligible score (sigmoid + correction bias, or softmax)
    and between the last kept and the first dropped group score."""
    out = model(ids, output_router_logits=True, use_cache=False)
    blocks = [layer.mlp for layer in model.model.layers if hasattr(layer.mlp, "experts")]
    arch, k = config.architectures[0], config.num_experts_per_tok
    margin = math.inf
    for logits, block in zip(out.router_logits, blocks):
        ll = logits.reshape(-1, logits.shape[-1]).float()
        n = ll.shape[-1]
        if arch == "DeepseekV2ForCausalLM":
            s = ll.softmax(-1)
        else:
            bias = block.e_score_correction_bias if arch == "MiniMaxM2ForCausalLM" else block.gate.e_score_correction_bias
            s = ll.sigmoid() + bias.float()
        groups = None
        if arch == "DeepseekV2ForCausalLM" and config.topk_method == "group_limited_greedy":
            groups = ("max", config.n_group, config.topk_group)
        elif arch in ("DeepseekV3ForCausalLM", "Glm4MoeForCausalLM") and (config.n_group or 1) > 1:
            groups = ("top2", config.n_group, config.topk_group)
        if groups:
            kind, g, keep = groups
            grouped = s.view(-1, g, n // g)
            gscore = grouped.max(-1).values if kind == "max" else grouped.topk(2, dim=-1).values.sum(-1)
            if keep < g:
                srt = gscore.sort(-1, descending=True).values
                margin = min(margin, float((srt[:, keep - 1] - srt[:, keep]).min()))
                mask = torch.zeros_like(gscore).scatter_(1, gscore.topk(keep, dim=-1).indices, 1).bool()
                mask = mask.unsqueeze(-1).expand(-1, g, n // g).reshape(-1, n)
                s = s.masked_fill(~mask, float("-inf") if kind == "top2" else 0.0)
        if k < n:
            srt = s.sort(-1, descending=True).values
            margin = min(margin, float((srt[:, k - 1] - srt[:, k]).min()))
    return margin


def routing_margin(model, ids: torch.Tensor, config) -> tuple[float, float]:
    """(margin, the margin it must clear) for this architecture's routing rule."""
    if config.architectures[0] in SCORE_ROUTED:
        return score_margins(model, ids, config), MIN_SCORE_MARGIN
    return router_margins(model, ids, config.num_experts_per_tok)[0], MIN_ROUTER_MARGIN


def build_checkpoint(fx: Fixture, d: Path, config, model_cls, wseed: int, theta: float):
    """Random bf16 model -> save_pretrained into d -> reload in float32 and check the round trip."""
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    torch.manual_seed(wseed)
    model = model_cls(config).eval()
    reinit(model, torch.Generator().manual_seed(wseed))
    model = model.to(torch.bfloat16)
    config.dtype = torch.bfloat16
    if fx.fp32_router:  # as DeepSeek-V3 ships them: routers and correction biases in float32
        for name, module in model.named_modules():
            if name.endswith("mlp.gate"):
                module.weight.data = module.weight.data.float()
                if hasattr(module, "e_score_correction_bias"):
                    module.e_score_correction_bias.data = module.e_score_correction_bias.data.float()

    total_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    shard = max(total_bytes // 3, 4096) if fx.sharded else "1GB"
    model.save_pretrained(d, safe_serialization=True, max_shard_size=shard)
    restyle_config(d / "config.json", fx.config_style, fx.extra.get("drop_partial", False))

    # Reload from disk in float32 (bf16 values are exactly representable) and check the round trip.
    ref, info = model_cls.from_pretrained(d, output_loading_info=True, **load_kwargs_f32())
    ref.eval()
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(k), (fx.name, k, info[k])
    sd_bf = model.state_dict()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, sd_bf[k].float()), (fx.name, "round trip", k)
    got_theta = ref.config.rope_parameters["rope_theta"]
    assert got_theta == theta, (fx.name, got_theta, theta)
    ref.generation_config = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=None,
                                             bos_token_id=None)

    tensors = checkpoint_tensors(d)
    for k, t in tensors.items():
        router = fx.fp32_router and (k.endswith("mlp.gate.weight") or k.endswith("e_score_correction_bias"))
        assert t[0] == ("F32" if router else "BF16"), (fx.name, k, t)
    if fx.sharded:
        assert (d / "model.safetensors.index.json").exists() and len(list(d.glob("model-*.safetensors"))) >= 2
    else:
        assert (d / "model.safetensors").exists()
    if config.tie_word_embeddings:
        assert "lm_head.weight" not in tensors, fx.name
    return model, ref, tensors


@torch.no_grad()
def search_prompt(ref, config, prng: random.Random, eos_set: set, tries: int):
    """Draw prompts until every router top-k decision and every greedy argmax has a clear margin
    and the greedy continuation is not a single repeated token. Returns the best draw."""
    V = config.vocab_size
    best = None
    for attempt in range(tries):
        prompt = [prng.randrange(V) for _ in range(PROMPT_LEN)]
        seq = list(prompt)  # no-cache greedy loop, recording argmax margins
        g_margin = math.inf
        for _ in range(GREEDY_TOKENS):
            logits = ref(torch.tensor([seq]), use_cache=False).logits[0, -1]
            top2 = torch.topk(logits, 2).values
            g_margin = min(g_margin, float(top2[0] - top2[1]))
            seq.append(int(torch.argmax(logits)))
        greedy = seq[PROMPT_LEN:]
        if eos_set & set(greedy):
            continue  # a server stops at EOS; keep the 8 greedy tokens free of it
        # router margins over the prompt plus the generated tokens (what a decode loop routes)
        r_margin, r_needed = routing_margin(ref, torch.tensor([seq[:-1]]), config)
        distinct = len(set(greedy))
        score = min(r_margin / r_needed, g_margin / MIN_GREEDY_MARGIN, distinct / 3)
        if best is None or score > best[0]:
            best = (score, prompt, greedy, r_margin, g_margin, attempt)
        if score >= 1.0:
            break
    return best


def make_one(fx: Fixture, out_root: Path, seed: int, tversion: str) -> dict:
    cfg_cls, model_cls = ARCHS[fx.arch]
    d = out_root / fx.name

    conf = dict(fx.config)
    theta = conf.pop("rope_theta")
    if fx.rope_scaling:
        scaling = {k: v for k, v in fx.rope_scaling.items() if k != "type"}
        conf["rope_parameters"] = {"rope_type": fx.rope_scaling["type"], **scaling, "rope_theta": theta}
    else:
        conf["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    if "partial_rotary_factor" in conf:
        conf["rope_parameters"]["partial_rotary_factor"] = conf.pop("partial_rotary_factor")
    conf.setdefault("bos_token_id", None)
    conf.setdefault("eos_token_id", None)
    eos = conf["eos_token_id"]
    eos_set = set(eos if isinstance(eos, list) else ([] if eos is None else [eos]))

    # Some random draws are degenerate (greedy repeats one token, near-tied routers); redraw the
    # weights a few times, deterministically, before accepting the best prompt found.
    for wdraw in range(WEIGHT_DRAWS):
        wseed = stable_seed(fx.name, seed, "weights", wdraw)
        config = cfg_cls(**conf)
        config.architectures = [fx.arch]
        model, ref, tensors = build_checkpoint(fx, d, config, model_cls, wseed, theta)
        prng = random.Random(stable_seed(fx.name, seed, "prompt", wdraw))
        best = search_prompt(ref, config, prng, eos_set, PROMPTS_PER_DRAW)
        if best is not None and best[0] >= 1.0:
            break
    assert best is not None, (fx.name, "every prompt produced an EOS token")
    score, prompt, greedy_nocache, r_margin, g_margin, attempt = best
    if score < 1.0:
        print(f"WARNING {fx.name}: best margins router={r_margin:.2e} greedy={g_margin:.2e} "
              f"distinct greedy tokens={len(set(greedy_nocache))} below thresholds", file=sys.stderr)

    with torch.no_grad():
        ids = torch.tensor([prompt])
        full = ref(ids, use_cache=False).logits[0].float()  # [T, V]
        gen = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY_TOKENS,
                           do_sample=False, use_cache=True, output_logits=True, return_dict_in_generate=True)
        greedy = gen.sequences[0, PROMPT_LEN:].tolist()
        assert greedy == greedy_nocache, (fx.name, greedy, greedy_nocache)
        # cached step logits vs full-sequence recompute
        seq = prompt + greedy
        full_seq = ref(torch.tensor([seq]), use_cache=False).logits[0].float()
        cache_diff = max(float((gen.logits[i][0].float() - full_seq[PROMPT_LEN - 1 + i]).abs().max())
                         for i in range(GREEDY_TOKENS))
        assert cache_diff < 1e-4, (fx.name, cache_diff)

        # sdpa vs eager agreement (sanity for the reference itself)
        sdpa = model_cls.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa").eval()
        sdpa_diff = float((sdpa(ids, use_cache=False).logits[0].float() - full).abs().max())

        # OLMoE: how much clip_qkv actually clamps
        clip_note = ""
        if fx.arch == "OlmoeForCausalLM" and config.clip_qkv is not None:
            counts = [0, 0]

            def hook(_m, _i, o):
                counts[0] += int((o.abs() > config.clip_qkv).sum())
                counts[1] += o.numel()

            hs = []
            for layer in ref.model.layers:
                a = layer.self_attn
                hs += [a.q_norm.register_forward_hook(hook), a.k_norm.register_forward_hook(hook),
                       a.v_proj.register_forward_hook(hook)]
            ref(ids, use_cache=False)
            for h in hs:
                h.remove()
            clip_note = f" clip_qkv clamps {counts[0]}/{counts[1]} q/k/v values on the prompt."

        # routing spread: how far from uniform the routers are
        _, rl = router_margins(ref, ids, config.num_experts_per_tok)
        ent = []
        for layer_logits in rl:
            p = torch.softmax(layer_logits.float(), -1)
            ent.append(float((-(p * p.clamp_min(1e-30).log()).sum(-1)).mean() / math.log(p.shape[-1])))

    moe_layers = [i for i, l in enumerate(ref.model.layers) if hasattr(l.mlp, "experts")]
    notes = (f"{fx.covers}. config style: {fx.config_style}. "
             f"MoE layers {moe_layers} of {config.num_hidden_layers}. "
             f"Weight draw {wdraw}, prompt draw {attempt + 1}: min router top-k logit margin {r_margin:.3g}, "
             f"min greedy top1-top2 logit gap {g_margin:.3g}. "
             f"generate() with KV cache == no-cache argmax loop; cached step logits differ from full "
             f"recompute by at most {cache_diff:.2g}; eager vs sdpa {sdpa_diff:.2g}. "
             f"Mean normalised router entropy {sum(ent) / len(ent):.2f} (1 = uniform)." + clip_note)

    reference = {
        "architecture": fx.arch,
        "name": fx.name,
        "prompt": prompt,
        "logits": [[sig6(x) for x in row] for row in full.tolist()],
        "greedy": greedy,
        "notes": notes,
        "eos_token_id": eos,
        "config_style": fx.config_style,
        "sharded": fx.sharded,
        "seed": seed,
        "weights_dtype": "bfloat16",
        "compute_dtype": "float32",
        "logits_positions": "every prompt position, [prompt_len][vocab_size]",
        "tolerance_hint": {"max_abs_logit_diff": 1e-3},
        "min_router_margin": sig6(r_margin) if math.isfinite(r_margin) else None,
        "min_greedy_margin": sig6(g_margin),
        "transformers_version": tversion,
        "torch_version": torch.__version__.split("+")[0],
    }
    (d / "reference.json").write_text(json.dumps(reference, separators=(",", ":"), allow_nan=False) + "\n")

    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"{fx.name:32s} {fx.arch:20s} params={sum(p.numel() for p in model.parameters()):7d} "
          f"files={size / 1024:6.1f} KiB shards={len(list(d.glob('*.safetensors')))} "
          f"router_margin={r_margin:.3g} greedy_margin={g_margin:.3g} draw={wdraw}/{attempt + 1} "
          f"entropy={sum(ent) / len(ent):.2f} greedy={greedy}", flush=True)
    return {"name": fx.name, "tensors": tensors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = Path(__file__).resolve().parent.parent
    ap.add_argument("--out", type=Path, default=repo / "Tests" / "Fixtures" / "models",
                    help="output directory (default: Tests/Fixtures/models in this repo)")
    ap.add_argument("--seed", type=int, default=0, help="base seed for weights and prompts (committed: 0)")
    ap.add_argument("--variant", action="store_true",
                    help="random configurations (sizes, top-k, flags, config style, sharding) instead of the "
                         "committed set; use with --out pointing outside the repo")
    ap.add_argument("--count", type=int, default=1, help="with --variant: configurations per architecture")
    ap.add_argument("--only", nargs="*", default=None, help="only these fixture names")
    ap.add_argument("--list", action="store_true", help="list the fixtures and exit")
    ap.add_argument("--print-tensors", action="store_true",
                    help="print the checkpoint tensor names (dtype, shape) of each generated fixture")
    args = ap.parse_args()

    if args.variant and args.out == ap.get_default("out"):
        ap.error("--variant writes unseen checkpoints: give --out DIR outside Tests/Fixtures/models")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
    fixtures = variant_fixtures(args.seed, args.count) if args.variant else committed_fixtures()
    if args.only:
        fixtures = [f for f in fixtures if f.name in args.only]
    if args.list:
        for f in fixtures:
            print(f"{f.name:32s} {f.arch:20s} style={f.config_style:3s} sharded={f.sharded}  {f.covers}")
        return 0

    tversion = transformers.__version__
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"transformers {tversion}, torch {torch.__version__}, seed {args.seed}, out {args.out}", flush=True)
    results = [make_one(f, args.out, args.seed, tversion) for f in fixtures]
    if args.print_tensors:
        for r in results:
            print(f"\n## {r['name']}")
            for k, (dt, shape, fname) in sorted(r["tensors"].items()):
                print(f"{k}  {dt} {shape}  {fname}")
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"total {total / 1024:.1f} KiB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
