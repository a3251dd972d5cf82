#!/usr/bin/env python3
"""Build tiny random gpt-oss (`GptOssForCausalLM`) checkpoints with Hugging Face `transformers` and
write reference outputs for MoEServe's fidelity tests, beside the other architectures' fixtures.

Run by hand (never in CI). Needs torch, transformers >= 5 (gpt_oss), safetensors:

    python scripts/make_gptoss_reference_models.py            # regenerate the gptoss-* fixtures
    python scripts/make_gptoss_reference_models.py --out /tmp/unseen --seed 7

The shared machinery (prompt search with router and greedy margins, reference.json fields) is
`make_reference_models.py`'s; this script adds what gpt-oss needs:

- prompts of 20 tokens, longer than every fixture's sliding window (3-5), so the window and the
  learned attention sinks both shape the logits;
- a clamped-SwiGLU fixture whose `swiglu_limit` is small enough that the clamp really bites;
- an MXFP4 fixture laid out as the published checkpoints are (`*_blocks` uint8
  `[experts, rows, cols/32, 16]` holding two e2m1 values per byte, low nibble first; `*_scales`
  uint8 e8m0 `[experts, rows, cols/32]`; `quantization_config.quant_method = "mxfp4"`), and its
  bf16 twin holding exactly the dequantized values (checked equal to transformers' own
  `convert_moe_packed_tensors`). The reference logits come from the twin, which transformers loads
  without the MXFP4 kernels; both directories carry them.
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
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig, GptOssConfig, GptOssForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_reference_models as base  # noqa: E402

base.PROMPT_LEN = 20
PROMPT_LEN = base.PROMPT_LEN
GREEDY_TOKENS = base.GREEDY_TOKENS


def gptoss_config(vocab, hidden, layers, heads, kv, head_dim, experts, topk, width, window, theta, **extra):
    c = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
             num_key_value_heads=kv, head_dim=head_dim, num_local_experts=experts, num_experts_per_tok=topk,
             intermediate_size=width, sliding_window=window, max_position_embeddings=256,
             rope_parameters={"rope_type": "default", "rope_theta": theta}, rms_norm_eps=1e-5,
             tie_word_embeddings=False, attention_dropout=0.0, bos_token_id=None, eos_token_id=None,
             pad_token_id=None)
    c.update(extra)
    return c


FIXTURES = [
    dict(name="gptoss-sliding4-sinks", style="hub", keep_layer_types=False, mxfp4=False,
         config=gptoss_config(97, 32, 3, 4, 2, 8, 8, 2, 32, 4, 10000.0),
         covers="3 layers with the default layer_types (sliding, full, sliding; not in config.json), "
                "sliding_window 4 < prompt 20, learned sinks, q/k/v/o biases, 8 experts top-2 (router bias, "
                "softmax over the chosen), fused gate_up_proj with interleaved columns, GQA 4q/2kv, head_dim 8, "
                "vocab 97, untied, hub-style config"),
    dict(name="gptoss-clamp-mqa-tied", style="new", keep_layer_types=True, mxfp4=False,
         config=gptoss_config(131, 64, 4, 4, 1, 12, 6, 4, 32, 3, 500000.0, tie_word_embeddings=True,
                              swiglu_limit=0.6, swiglu_alpha=1.2,
                              layer_types=["full_attention", "sliding_attention", "sliding_attention",
                                           "full_attention"])),
    dict(name="gptoss-mxfp4", style="new", keep_layer_types=True, mxfp4=True,
         config=gptoss_config(113, 64, 2, 4, 2, 16, 4, 2, 64, 5, 150000.0)),
]
YARN_FIXTURES = [
    dict(name="gptoss-yarn-published-style", style="hub", keep_layer_types=True, mxfp4=False,
         config=gptoss_config(89, 32, 2, 4, 2, 8, 4, 2, 32, 6, 150000.0,
                              rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                                               "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                                               "original_max_position_embeddings": 4096}),
         covers="rope_scaling yarn as the published configs write it (factor 32, beta_fast 32, beta_slow 1, "
                "truncate false, original_max_position_embeddings 4096), sliding_window 6, 4 experts top-2"),
    dict(name="gptoss-yarn-default", style="hub", keep_layer_types=False, mxfp4=False,
         config=gptoss_config(97, 32, 3, 4, 2, 8, 8, 2, 32, 4, 10000.0,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), omit_rope=True,
         covers="no rope_scaling and no layer_types in config.json: transformers' GptOssConfig then applies YaRN "
                "(factor 32, original 4096) and alternating sliding/full layers; sliding_window 4"),
]
FIXTURES[1]["covers"] = ("explicit layer_types [full, sliding, sliding, full], sliding_window 3, swiglu_limit 0.6 "
                         "and swiglu_alpha 1.2 (the clamp bites), MQA (1 kv head), head_dim 12 (q_proj out 48 < "
                         "hidden 64), 6 experts top-4, tied embeddings, vocab 131, new-style config")
FIXTURES[2]["covers"] = ("experts in MXFP4 as published (gate_up_proj_blocks/_scales, down_proj_blocks/_scales, "
                         "bf16 biases, quantization_config mxfp4); logits from the bf16 twin gptoss-mxfp4-bf16 "
                         "(exactly the dequantized values); sliding_window 5, head_dim 16, 4 experts top-2")


@torch.no_grad()
def reinit(model, gen: torch.Generator) -> None:
    """The shared larger-than-default init, then gpt-oss's own parameters: sinks of order one (so
    they change the attention), router weights and biases that spread the routing."""
    base.reinit(model, gen)
    for name, p in model.named_parameters():
        if name.endswith("self_attn.sinks"):
            p.copy_(1.0 * torch.randn(p.shape, generator=gen))
        elif name.endswith("mlp.router.weight"):
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        elif name.endswith("mlp.router.bias") or name.endswith("_proj_bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@torch.no_grad()
def mxfp4_values(model, gen: torch.Generator) -> dict:
    """Replaces every expert matrix by random MXFP4 values and returns their blocks and scales,
    keyed as the published checkpoints name them."""
    packed = {}
    for i, layer in enumerate(model.model.layers):
        experts = layer.mlp.experts
        for proj in ("gate_up_proj", "down_proj"):
            p = getattr(experts, proj)                    # gate_up: [E, H, 2I], down: [E, I, H] (x @ W)
            E, cols, rows = p.shape                       # stored transposed: rows = outputs
            nibbles = torch.randint(0, 16, (E, rows, cols // 32, 32), generator=gen, dtype=torch.int32)
            scales = torch.randint(127 - 5, 127 - 1, (E, rows, cols // 32), generator=gen, dtype=torch.int32)
            blocks = (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)  # low nibble first
            lut = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
            values = torch.ldexp(lut[nibbles], (scales - 127)[..., None].float())       # [E, rows, cols/32, 32]
            dense = values.reshape(E, rows, cols).transpose(1, 2).contiguous()           # [E, cols, rows]
            p.copy_(dense.to(p.dtype))
            assert torch.equal(p.float(), dense), "MXFP4 values must be exact in bf16"
            key = f"model.layers.{i}.mlp.experts.{proj}"
            packed[key + "_blocks"] = blocks
            packed[key + "_scales"] = scales.to(torch.uint8)
    return packed


def restyle(path: Path, style: str, keep_layer_types: bool, omit_rope: bool = False) -> None:
    """Hub style as the published gpt-oss configs (top-level rope_theta, rope_scaling,
    torch_dtype); new style with rope_parameters and dtype."""
    cfg = json.loads(path.read_text())
    rp = cfg.pop("rope_parameters")
    dtype = cfg.pop("dtype", None) or cfg.pop("torch_dtype", None)
    if not keep_layer_types:
        cfg.pop("layer_types", None)
    if style == "hub":
        cfg["rope_theta"] = rp["rope_theta"]
        scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
        # Explicit even for the default rope: a gpt-oss config without rope_scaling means YaRN
        # with transformers' defaults (GptOssConfig), which the gptoss-yarn-default fixture covers.
        cfg["rope_scaling"] = None if omit_rope else scaling
        cfg["torch_dtype"] = dtype
    else:
        cfg["rope_parameters"] = rp
        cfg["dtype"] = dtype
    path.write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")


def load_f32(d: Path):
    return GptOssForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                             experts_implementation="eager").eval()


def make_one(fx: dict, out: Path, seed: int) -> None:
    d = out / (fx["name"] + ("-bf16" if fx["mxfp4"] else ""))
    conf = dict(fx["config"])
    for wdraw in range(base.WEIGHT_DRAWS):
        wseed = base.stable_seed(fx["name"], seed, "weights", wdraw)
        config = GptOssConfig(**conf)
        config.architectures = ["GptOssForCausalLM"]
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        torch.manual_seed(wseed)
        model = GptOssForCausalLM(config).eval()
        gen = torch.Generator().manual_seed(wseed)
        reinit(model, gen)
        model = model.to(torch.bfloat16)
        packed = mxfp4_values(model, gen) if fx["mxfp4"] else None
        config.dtype = torch.bfloat16
        model.save_pretrained(d, safe_serialization=True)
        restyle(d / "config.json", fx["style"], fx["keep_layer_types"], fx.get("omit_rope", False))
        ref = load_f32(d)
        sd = model.state_dict()
        for k, v in ref.state_dict().items():
            assert torch.equal(v, sd[k].float()), (fx["name"], "round trip", k)
        ref.generation_config = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=None,
                                                 bos_token_id=None)
        best = base.search_prompt(ref, config, random.Random(base.stable_seed(fx["name"], seed, "prompt", wdraw)),
                                  set(), base.PROMPTS_PER_DRAW)
        if best is not None and best[0] >= 1.0:
            break
    score, prompt, greedy_nocache, r_margin, g_margin, attempt = best
    if score < 1.0:
        print(f"WARNING {fx['name']}: margins router={r_margin:.2e} greedy={g_margin:.2e}", file=sys.stderr)
    with torch.no_grad():
        ids = torch.tensor([prompt])
        full = ref(ids, use_cache=False).logits[0].float()
        gen_out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY_TOKENS,
                               do_sample=False, use_cache=True, return_dict_in_generate=True)
        greedy = gen_out.sequences[0, PROMPT_LEN:].tolist()
        assert greedy == greedy_nocache, (fx["name"], greedy, greedy_nocache)
    window = config.sliding_window
    assert PROMPT_LEN > window
    notes = (f"{fx['covers']}. Weight draw {wdraw}, prompt draw {attempt + 1}: min router top-k logit margin "
             f"{r_margin:.3g}, min greedy top1-top2 gap {g_margin:.3g}. layer_types {config.layer_types}. "
             f"generate() with KV cache == no-cache argmax loop.")
    reference = {
        "architecture": "GptOssForCausalLM", "name": fx["name"], "prompt": prompt,
        "logits": [[base.sig6(x) for x in row] for row in full.tolist()], "greedy": greedy, "notes": notes,
        "eos_token_id": None, "config_style": fx["style"], "sharded": False, "seed": seed,
        "weights_dtype": "bfloat16", "compute_dtype": "float32",
        "logits_positions": "every prompt position, [prompt_len][vocab_size]",
        "tolerance_hint": {"max_abs_logit_diff": 1e-3},
        "min_router_margin": base.sig6(r_margin), "min_greedy_margin": base.sig6(g_margin),
        "transformers_version": transformers.__version__, "torch_version": torch.__version__.split("+")[0],
    }
    (d / "reference.json").write_text(json.dumps(reference, separators=(",", ":"), allow_nan=False) + "\n")
    print(f"{d.name:28s} router_margin={r_margin:.3g} greedy_margin={g_margin:.3g} greedy={greedy}", flush=True)

    if fx["mxfp4"]:
        # The published layout: the twin's tensors with every expert matrix replaced by its
        # blocks and scales, plus quantization_config.
        from transformers.integrations.mxfp4 import convert_moe_packed_tensors
        q = out / fx["name"]
        if q.exists():
            shutil.rmtree(q)
        q.mkdir(parents=True)
        tensors = load_file(str(d / "model.safetensors"))
        for key in list(packed):
            if key.endswith("_blocks"):
                name = key[: -len("_blocks")]
                twin = tensors.pop(name)
                ours = convert_moe_packed_tensors(packed[key], packed[name + "_scales"], dtype=torch.bfloat16)
                assert torch.equal(ours, twin), ("transformers dequantizes differently", name)
        tensors.update(packed)
        save_file(tensors, str(q / "model.safetensors"), metadata={"format": "pt"})
        cfg = json.loads((d / "config.json").read_text())
        cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
        (q / "config.json").write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")
        for extra in ("generation_config.json", "reference.json"):
            shutil.copy(d / extra, q / extra)
        print(f"{q.name:28s} MXFP4 experts, {sum(f.stat().st_size for f in q.iterdir()) / 1024:.1f} KiB", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = Path(__file__).resolve().parent.parent
    ap.add_argument("--out", type=Path, default=repo / "Tests" / "Fixtures" / "models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--yarn", action="store_true", help="also the YaRN fixtures")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    for fx in FIXTURES + (YARN_FIXTURES if args.yarn else []):
        if args.only and fx["name"] not in args.only:
            continue
        make_one(fx, args.out, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
