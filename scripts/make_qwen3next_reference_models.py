#!/usr/bin/env python3
"""Build tiny random Qwen3-Next (`Qwen3NextForCausalLM`) checkpoints with Hugging Face `transformers`
and write reference outputs for MoEServe's fidelity tests, in the same format as
`scripts/make_reference_models.py` (whose helpers this script reuses).

Run by hand (never in CI). Needs torch, transformers >= 5 (qwen3_next), safetensors:

    python scripts/make_qwen3next_reference_models.py            # regenerate Tests/Fixtures/models/qwen3next-*
    python scripts/make_qwen3next_reference_models.py --out /tmp/unseen --seed 7

Qwen3-Next mixes gated delta-net linear attention with gated full attention, so the prompts are longer than
one chunk of transformers' chunked delta rule (64 tokens): the reference logits at every position cover the
chunked prefill across a chunk boundary, and the greedy continuation covers the recurrent (token by token)
form that `generate` uses after the prompt, starting from the state the chunked prefill left.

The checkpoints are saved the way the published Qwen3-Next checkpoints are: per-expert
`mlp.experts.E.{gate,up,down}_proj` tensors, `linear_attn.{in_proj_qkvz,in_proj_ba,conv1d,A_log,dt_bias,norm,
out_proj}`, `self_attn.q_proj` twice as wide as the heads (query and output gate per head). Hub-style configs
say `full_attention_interval` and a top-level `partial_rotary_factor` as the published config.json does;
new-style ones `layer_types` and `rope_parameters.partial_rotary_factor`.
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
from pathlib import Path

import torch
import transformers
from transformers import GenerationConfig, Qwen3NextConfig, Qwen3NextForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_reference_models as common  # noqa: E402  (reinit, checkpoint_tensors, sig6, stable_seed)

ARCH = "Qwen3NextForCausalLM"
GREEDY_TOKENS = 8
MIN_ROUTER_MARGIN = common.MIN_ROUTER_MARGIN
MIN_GREEDY_MARGIN = common.MIN_GREEDY_MARGIN
PROMPTS_PER_DRAW = 40
WEIGHT_DRAWS = 4


def fixtures() -> list[common.Fixture]:
    """The committed Qwen3-Next fixtures (generated with --seed 0). `extra["prompt_len"]` > 64."""
    fx = []
    c = common.base(97, 32, 4, 4, 2, 1e6, eps=1e-6)
    c.update(head_dim=16, partial_rotary_factor=0.25, layer_types=["linear_attention", "full_attention"] * 2,
             linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
             linear_conv_kernel_dim=4, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
             shared_expert_intermediate_size=24, intermediate_size=40, norm_topk_prob=True, decoder_sparse_step=1,
             mlp_only_layers=[], attention_bias=False)
    fx.append(common.Fixture(
        "qwen3next-hybrid-gqa", ARCH, c,
        "4 layers linear/full alternating (hub config: full_attention_interval=2), gated attention 4q/2kv heads "
        "head_dim 16 with partial rotary 0.25 (4 of 16 dims), delta-net 2 key heads / 4 value heads (2 value heads "
        "per key head) of 8/8 dims, conv kernel 4, 8 experts top-2 norm_topk_prob=true, shared expert width 24 "
        "with sigmoid gate, vocab 97, untied, prompt of 80 tokens (two delta-rule chunks)",
        "hub", False, {"prompt_len": 80}))

    c = common.base(131, 48, 3, 2, 1, 1e7, eps=1e-5, tie=True)
    c.update(head_dim=24, partial_rotary_factor=0.5, layer_types=["linear_attention", "linear_attention", "full_attention"],
             linear_num_key_heads=3, linear_num_value_heads=3, linear_key_head_dim=16, linear_value_head_dim=12,
             linear_conv_kernel_dim=3, num_experts=6, num_experts_per_tok=3, moe_intermediate_size=16,
             shared_expert_intermediate_size=32, intermediate_size=40, norm_topk_prob=False, decoder_sparse_step=1,
             mlp_only_layers=[1], attention_bias=False)
    fx.append(common.Fixture(
        "qwen3next-linear-heavy-tied", ARCH, c,
        "3 layers linear, linear, full (layer_types), MQA 2q/1kv head_dim 24 partial rotary 0.5, delta-net 3/3 "
        "heads with key dim 16 != value dim 12, conv kernel 3, mlp_only_layers=[1] (dense width 40), 6 experts "
        "top-3 norm_topk_prob=false, shared expert width 32, tied embeddings, rms_norm_eps 1e-5, vocab 131, "
        "new-style config, sharded, prompt of 100 tokens",
        "new", True, {"prompt_len": 100}))

    c = common.base(113, 32, 3, 2, 2, 10000.0, eps=1e-6)
    c.update(head_dim=8, partial_rotary_factor=1.0, layer_types=["full_attention", "linear_attention", "linear_attention"],
             linear_num_key_heads=1, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=16,
             linear_conv_kernel_dim=2, num_experts=4, num_experts_per_tok=1, moe_intermediate_size=24,
             shared_expert_intermediate_size=16, intermediate_size=48, norm_topk_prob=True, decoder_sparse_step=2,
             mlp_only_layers=[], attention_bias=False)
    fx.append(common.Fixture(
        "qwen3next-fullfirst-sparse-step", ARCH, c,
        "3 layers full, linear, linear (layer_types), MHA 2/2 heads head_dim 8 (q_proj out 32 = hidden) full "
        "rotary, delta-net 1 key head shared by 4 value heads, key dim 8, value dim 16, conv kernel 2, "
        "decoder_sparse_step=2 (only layer 1 MoE; dense width 48), 4 experts top-1, shared width 16, vocab 113, "
        "new-style config, prompt of 70 tokens",
        "new", False, {"prompt_len": 70}))
    return fx


def restyle_config(path: Path, style: str, interval: int | None) -> None:
    """Hub style as the published Qwen3-Next config.json (top-level rope_theta, partial_rotary_factor,
    torch_dtype, full_attention_interval, no layer_types) or the newer style (rope_parameters, dtype, layer_types)."""
    cfg = json.loads(path.read_text())
    rp = cfg.pop("rope_parameters", None) or {}
    assert rp.get("rope_type", "default") == "default", rp
    theta = cfg.pop("rope_theta", None) or rp.get("rope_theta")
    factor = cfg.pop("partial_rotary_factor", None) or rp.get("partial_rotary_factor")
    cfg.pop("rope_scaling", None)
    dtype = cfg.pop("dtype", None) or cfg.pop("torch_dtype", None)
    cfg.pop("torch_dtype", None)
    assert theta is not None and factor is not None and dtype == "bfloat16", (theta, factor, dtype)
    if style == "hub":
        assert interval is not None
        cfg.pop("layer_types")
        cfg["full_attention_interval"] = interval
        cfg["rope_theta"] = theta
        cfg["partial_rotary_factor"] = factor
        cfg["rope_scaling"] = None
        cfg["torch_dtype"] = dtype
    else:
        cfg["rope_parameters"] = {"rope_theta": theta, "rope_type": "default", "partial_rotary_factor": factor}
        cfg["dtype"] = dtype
    path.write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")


def full_attention_interval(layer_types: list[str]) -> int | None:
    for n in range(1, len(layer_types) + 1):
        if all((t == "full_attention") == ((i + 1) % n == 0) for i, t in enumerate(layer_types)):
            return n
    return None


def build_checkpoint(fx, d: Path, config, wseed: int):
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    torch.manual_seed(wseed)
    model = Qwen3NextForCausalLM(config).eval()
    common.reinit(model, torch.Generator().manual_seed(wseed))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(wseed + 1)
        for name, p in model.named_parameters():
            # Qwen3-Next's RMSNorms scale by (1 + weight) and start at 0: keep them near 0 so that the
            # offset matters; A_log and dt_bias with decays from slight to strong (A in [0.05, 1.6], dt_bias near 1) so
            # that the decay per head differs; the gated norm's weight (`linear_attn.norm`) is a plain scale.
            if name.endswith("layernorm.weight") or name.endswith("q_norm.weight") or name.endswith("k_norm.weight") \
                    or name == "model.norm.weight":
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(-3.0, 0.5, generator=gen))
            elif name.endswith("dt_bias"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("conv1d.weight"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    model = model.to(torch.bfloat16)
    config.dtype = torch.bfloat16
    total_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    shard = max(total_bytes // 3, 4096) if fx.sharded else "1GB"
    model.save_pretrained(d, safe_serialization=True, max_shard_size=shard)
    restyle_config(d / "config.json", fx.config_style, full_attention_interval(config.layer_types))

    ref, info = Qwen3NextForCausalLM.from_pretrained(d, output_loading_info=True, **common.load_kwargs_f32())
    ref.eval()
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(k), (fx.name, k, info[k])
    sd_bf = model.state_dict()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, sd_bf[k].float()), (fx.name, "round trip", k)
    assert ref.config.layer_types == config.layer_types, (ref.config.layer_types, config.layer_types)
    assert ref.config.rope_parameters.get("partial_rotary_factor") == config.rope_parameters.get("partial_rotary_factor")
    ref.generation_config = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=None, bos_token_id=None)
    tensors = common.checkpoint_tensors(d)
    assert all(t[0] == "BF16" for t in tensors.values()), fx.name
    assert any(".linear_attn.in_proj_qkvz.weight" in k for k in tensors), fx.name
    assert any(".mlp.experts.0.gate_proj.weight" in k for k in tensors), ("per-expert names", fx.name)
    if config.tie_word_embeddings:
        assert "lm_head.weight" not in tensors, fx.name
    return model, ref, tensors


@torch.no_grad()
def search_prompt(ref, config, prng: random.Random, prompt_len: int, tries: int):
    """As make_reference_models.search_prompt, for a prompt of `prompt_len` tokens."""
    V = config.vocab_size
    best = None
    for attempt in range(tries):
        prompt = [prng.randrange(V) for _ in range(prompt_len)]
        seq = list(prompt)
        g_margin = math.inf
        for _ in range(GREEDY_TOKENS):
            logits = ref(torch.tensor([seq]), use_cache=False).logits[0, -1]
            top2 = torch.topk(logits, 2).values
            g_margin = min(g_margin, float(top2[0] - top2[1]))
            seq.append(int(torch.argmax(logits)))
        greedy = seq[prompt_len:]
        r_margin, _ = common.router_margins(ref, torch.tensor([seq[:-1]]), config.num_experts_per_tok)
        score = min(r_margin / MIN_ROUTER_MARGIN, g_margin / MIN_GREEDY_MARGIN, len(set(greedy)) / 3)
        if best is None or score > best[0]:
            best = (score, prompt, greedy, r_margin, g_margin, attempt)
        if score >= 1.0:
            break
    return best


def make_one(fx, out_root: Path, seed: int, tversion: str) -> None:
    d = out_root / fx.name
    conf = dict(fx.config)
    theta = conf.pop("rope_theta")
    factor = conf.pop("partial_rotary_factor")
    conf["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": factor}
    conf.setdefault("bos_token_id", None)
    conf.setdefault("eos_token_id", None)
    prompt_len = fx.extra["prompt_len"]
    for wdraw in range(WEIGHT_DRAWS):
        wseed = common.stable_seed(fx.name, seed, "weights", wdraw)
        config = Qwen3NextConfig(**conf)
        config.architectures = [ARCH]
        model, ref, tensors = build_checkpoint(fx, d, config, wseed)
        prng = random.Random(common.stable_seed(fx.name, seed, "prompt", wdraw))
        best = search_prompt(ref, config, prng, prompt_len, PROMPTS_PER_DRAW)
        if best[0] >= 1.0:
            break
    score, prompt, greedy_nocache, r_margin, g_margin, attempt = best
    if score < 1.0:
        print(f"WARNING {fx.name}: best margins router={r_margin:.2e} greedy={g_margin:.2e}", file=sys.stderr)

    with torch.no_grad():
        ids = torch.tensor([prompt])
        full = ref(ids, use_cache=False).logits[0].float()
        gen = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY_TOKENS, do_sample=False,
                           use_cache=True, output_logits=True, return_dict_in_generate=True)
        greedy = gen.sequences[0, prompt_len:].tolist()
        assert greedy == greedy_nocache, (fx.name, greedy, greedy_nocache)
        seq = prompt + greedy
        full_seq = ref(torch.tensor([seq]), use_cache=False).logits[0].float()
        cache_diff = max(float((gen.logits[i][0].float() - full_seq[prompt_len - 1 + i]).abs().max())
                         for i in range(GREEDY_TOKENS))
        assert cache_diff < 1e-4, (fx.name, cache_diff)
        # The chunked prefill split at another place (as a server's prefill chunks split a prompt) gives the
        # same logits: run the prompt as 37 tokens, then the rest, through the cache.
        from transformers import DynamicCache
        cache = DynamicCache(config=ref.config)
        first = ref(ids[:, :37], cache=cache, use_cache=True).logits[0].float()
        rest = ref(ids[:, 37:], cache=cache, use_cache=True).logits[0].float()
        split_diff = float((torch.cat([first, rest]) - full).abs().max())
        assert split_diff < 1e-4, (fx.name, split_diff)
        _, rl = common.router_margins(ref, ids, config.num_experts_per_tok)
        ent = []
        for layer_logits in rl:
            p = torch.softmax(layer_logits.float(), -1)
            ent.append(float((-(p * p.clamp_min(1e-30).log()).sum(-1)).mean() / math.log(p.shape[-1])))

    moe_layers = [i for i, l in enumerate(ref.model.layers) if hasattr(l.mlp, "experts")]
    notes = (f"{fx.covers}. config style: {fx.config_style}. layer_types {config.layer_types}. "
             f"MoE layers {moe_layers} of {config.num_hidden_layers}. "
             f"Weight draw {wdraw}, prompt draw {attempt + 1}: min router top-k logit margin {r_margin:.3g}, "
             f"min greedy top1-top2 logit gap {g_margin:.3g}. generate() (chunked prefill, then recurrent decode) "
             f"== no-cache argmax loop; cached step logits differ from full recompute by at most {cache_diff:.2g}; "
             f"prefill split 37 + rest differs by {split_diff:.2g}. "
             f"Mean normalised router entropy {sum(ent) / len(ent):.2f} (1 = uniform).")
    reference = {
        "architecture": ARCH,
        "name": fx.name,
        "prompt": prompt,
        "logits": [[common.sig6(x) for x in row] for row in full.tolist()],
        "greedy": greedy,
        "notes": notes,
        "eos_token_id": conf["eos_token_id"],
        "config_style": fx.config_style,
        "sharded": fx.sharded,
        "seed": seed,
        "weights_dtype": "bfloat16",
        "compute_dtype": "float32",
        "logits_positions": "every prompt position, [prompt_len][vocab_size]",
        "tolerance_hint": {"max_abs_logit_diff": 1e-3},
        "min_router_margin": common.sig6(r_margin) if math.isfinite(r_margin) else None,
        "min_greedy_margin": common.sig6(g_margin),
        "transformers_version": tversion,
        "torch_version": torch.__version__.split("+")[0],
    }
    (d / "reference.json").write_text(json.dumps(reference, separators=(",", ":"), allow_nan=False) + "\n")
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"{fx.name:34s} params={sum(p.numel() for p in model.parameters()):7d} files={size / 1024:6.1f} KiB "
          f"router_margin={r_margin:.3g} greedy_margin={g_margin:.3g} draw={wdraw}/{attempt + 1} "
          f"split_diff={split_diff:.2g} greedy={greedy}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = Path(__file__).resolve().parent.parent
    ap.add_argument("--out", type=Path, default=repo / "Tests" / "Fixtures" / "models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    chosen = [f for f in fixtures() if not args.only or f.name in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, seed {args.seed}", flush=True)
    for f in chosen:
        make_one(f, args.out, args.seed, transformers.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
