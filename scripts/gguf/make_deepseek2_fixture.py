#!/usr/bin/env python3
"""Make the `deepseek2` GGUF fixtures and llama.cpp's reference next-token distributions (issue 21).

    /work/venv/bin/python scripts/gguf/make_deepseek2_fixture.py [--llama-cpp ~/.cache/moe-serve-llama-cpp] [--out Tests/Fixtures/gguf/deepseek2]

Run by hand, never in CI (torch, transformers, gguf-py and a built llama.cpp). The same steps
as `make_gguf_fixtures.py` (whose converter call and llama-server client it reuses):

  1. a random-weight DeepSeek-V3-style checkpoint (`DeepseekV3ForCausalLM`, seeded): query
     compression (q_lora_rank set), multi-head latent attention, the first layer dense, 8 routed
     experts in 4 groups (top-2 groups, top-2 experts) scored by sigmoid with a random
     `e_score_correction_bias`, 1 shared expert, `routed_scaling_factor` 2.5, renormalised top-k.
     `scoring_func: sigmoid` is written into config.json as DeepSeek-V3's own config has it
     (without it the converter writes no `expert_gating_func` and llama.cpp falls back to softmax).
     Hidden 128 and every quantised matrix's input width a multiple of 32, so Q8_0 and Q4_0 apply;
  2. llama.cpp's converter (F32 GGUF: `kv_b_proj` split into `attn_k_b` transposed and `attn_v_b`);
  3. `llama-quantize` to Q8_0 and Q4_0 (attn_kv_a_mqa, attn_k_b and attn_v_b are quantised too);
  4. llama-server's `/completion` top-5 log-probabilities after every prefix of the three prompts.

`--lite` makes the DeepSeek-V2-Lite-style file instead (`DeepseekV2ForCausalLM`: no query compression,
softmax routing without groups or correction bias, no renormalisation, scaling 1, two shared experts,
untied embeddings). llama.cpp reads `attention.q_lora_rank` as required unless the model has 26 or 27
layers (its "lite" test), so this one has 26 layers, kept small by hidden 32 and four experts of 32:
`deepseek2lite-Q8_0.gguf` and its `reference.json` in Tests/Fixtures/gguf/deepseek2-lite.

Output: `deepseek2-<TYPE>.gguf` and `reference.json` in the format of `make_gguf_fixtures.py`'s.
The Swift test is `Tests/MoEModelsTests/GGUFDeepseek2Tests.swift`.
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
from make_gguf_fixtures import PROMPTS, TOKENIZER, ROOT, convert, reference_steps  # noqa: E402

CONFIG = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
              q_lora_rank=64, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
              n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, moe_intermediate_size=32,
              intermediate_size=128, n_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5,
              norm_topk_prob=True, rope_interleave=True, rms_norm_eps=1e-6, tie_word_embeddings=True,
              scoring_func="sigmoid", topk_method="noaux_tc")
TYPES = ["Q8_0", "Q4_0"]

LITE_CONFIG = dict(hidden_size=32, num_hidden_layers=26, num_attention_heads=2, num_key_value_heads=2,
                   q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
                   n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=32,
                   intermediate_size=64, n_shared_experts=2, first_k_dense_replace=1, routed_scaling_factor=1.0,
                   norm_topk_prob=False, topk_method="greedy", rms_norm_eps=1e-6, tie_word_embeddings=False)
LITE_TYPES = ["Q8_0"]


def build_lite_checkpoint(directory: Path, seed: int) -> None:
    import torch
    import transformers

    config = transformers.DeepseekV2Config(vocab_size=1536, max_position_embeddings=512,
                                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                           bos_token_id=None, eos_token_id=1504, pad_token_id=0, **LITE_CONFIG)
    torch.manual_seed(seed)
    model = transformers.DeepseekV2ForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.15 if "embed" in name or "lm_head" in name else 0.08)
            elif name.endswith("layernorm.weight"):
                p.copy_(1 + torch.randn(p.shape) * 0.1)
    model.save_pretrained(directory, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(TOKENIZER / f, directory / f)


def build_checkpoint(directory: Path, seed: int) -> None:
    import torch
    import transformers

    config = transformers.DeepseekV3Config(vocab_size=1536, max_position_embeddings=512,
                                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                           bos_token_id=None, eos_token_id=1504, pad_token_id=0, **CONFIG)
    torch.manual_seed(seed)
    model = transformers.DeepseekV3ForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.15 if "embed" in name or "lm_head" in name else 0.06)
        # Latent norms and the correction bias: not their identity/zero init, so that both matter.
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("e_score_correction_bias"):
                p.copy_(torch.randn(p.shape) * 0.05)
            elif name.endswith("layernorm.weight"):
                p.copy_(1 + torch.randn(p.shape) * 0.1)
    model.save_pretrained(directory, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(TOKENIZER / f, directory / f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-cpp", type=Path, default=Path.home() / ".cache/moe-serve-llama-cpp")
    parser.add_argument("--out", type=Path, default=ROOT / "Tests/Fixtures/gguf/deepseek2")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--lite", action="store_true", help="the 26-layer V2-Lite-style file (see above)")
    args = parser.parse_args()
    if args.lite and args.out == ROOT / "Tests/Fixtures/gguf/deepseek2":
        args.out = ROOT / "Tests/Fixtures/gguf/deepseek2-lite"
    name, build, types, architecture = (("deepseek2lite", build_lite_checkpoint, LITE_TYPES, "DeepseekV2ForCausalLM") if args.lite
                                        else ("deepseek2", build_checkpoint, TYPES, "DeepseekV3ForCausalLM"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    banned = [i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
    args.out.mkdir(parents=True, exist_ok=True)
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / name
        build(checkpoint, args.seed)
        base = Path(tmp) / f"{name}-F32.gguf"
        convert(args.llama_cpp, checkpoint, base)
        for qtype in types:
            out = args.out / f"{name}-{qtype}.gguf"
            subprocess.run([str(args.llama_cpp / "build/bin/llama-quantize"), str(base), str(out), qtype, "2"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            steps = reference_steps(args.llama_cpp, out, prompts, banned)
            models.append({"file": out.name, "architecture": architecture, "type": qtype, "steps": steps})
            print(f"{out.name}: {out.stat().st_size} bytes, {len(steps)} steps", file=sys.stderr)
    (args.out / "reference.json").write_text(json.dumps({"prompts": prompts, "models": models}, indent=1) + "\n")


if __name__ == "__main__":
    main()
