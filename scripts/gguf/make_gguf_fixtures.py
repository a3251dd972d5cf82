#!/usr/bin/env python3
"""Make the GGUF fixtures and llama.cpp's reference next-token distributions (issue 21).

    /work/venv/bin/python scripts/gguf/make_gguf_fixtures.py [--llama-cpp ~/.cache/moe-serve-llama-cpp] [--out Tests/Fixtures/gguf]

Run by hand, never in CI (it needs torch, transformers, gguf-py and a built llama.cpp:
llama-server and llama-quantize from `build/bin`, the converter `src/convert_hf_to_gguf.py`).

For each small configuration below it
  1. builds a random-weight Hugging Face checkpoint with `transformers` (seeded), with the
     byte-level BPE tokenizer of Tests/Fixtures/tokenizers/qwen2 (1,506 tokens);
  2. converts it with llama.cpp's own converter to an F32 GGUF (the converter identifies a
     tokenizer's pre-tokenizer by hashing an encoding; this tokenizer is new to it, so the
     pre-tokenizer is chosen here, "qwen2", by overriding `get_vocab_base_pre` in-process:
     the llama.cpp tree is not modified);
  3. quantizes it with `llama-quantize` to the listed types;
  4. starts `llama-server` on each file (loopback, 2 threads) and asks `/completion` for the
     top-5 log-probabilities (`n_probs`, before sampling) after every prefix of each prompt.

Output: `<name>-<TYPE>.gguf` and `reference.json` = {"prompts": [[ids]...], "models": [{"file",
"architecture", "type", "steps": [{"prompt", "length", "top": [[id, logprob] x5]}]}]}.
The Swift test (`Tests/ModelFormatsTests/GGUFLlamaCppTests.swift`) requires the same top-1 and
|Δ logprob| ≤ 0.1 over llama.cpp's top 5 at every prefix.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "Tests/Fixtures/tokenizers/qwen2"

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b",
    "In 1492, sailors crossed the ocean",
]

# name, HF architecture, config overrides, quantization types. Hidden 256 where the k-quants
# should apply (their blocks are 256 wide; llama-quantize falls back elsewhere).
CONFIGS = [
    ("qwen3moe", "Qwen3MoeForCausalLM", dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                             head_dim=64, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128,
                                             intermediate_size=256, norm_topk_prob=True, tie_word_embeddings=True),
     ["Q4_K_M", "Q6_K", "Q4_0"]),
    ("qwen2moe", "Qwen2MoeForCausalLM", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, intermediate_size=128,
                                             shared_expert_intermediate_size=96, norm_topk_prob=False, tie_word_embeddings=False),
     ["Q8_0", "Q4_0", "Q5_1"]),
    ("olmoe", "OlmoeForCausalLM", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                       num_experts=4, num_experts_per_tok=2, intermediate_size=64, rms_norm_eps=1e-5,
                                       norm_topk_prob=False, clip_qkv=None, tie_word_embeddings=False),
     ["Q8_0", "Q4_1", "Q5_0"]),
    ("mixtral", "MixtralForCausalLM", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           num_local_experts=4, num_experts_per_tok=2, intermediate_size=64, sliding_window=None,
                                           tie_word_embeddings=False),
     ["Q8_0", "IQ4_NL", "Q4_0"]),
]


def build_checkpoint(name: str, arch: str, overrides: dict, directory: Path, seed: int) -> None:
    import torch
    import transformers

    config_class = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    model_class = getattr(transformers, arch)
    config = config_class(vocab_size=1536, max_position_embeddings=512, rope_theta=10000.0,
                          bos_token_id=None, eos_token_id=1504, pad_token_id=0, **overrides)
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    # Random init gives tiny logits everywhere; scale weights up so distributions are peaked
    # enough that top-5 ranks mean something, deterministically.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.15 if "embed" in pname or "lm_head" in pname else 0.06)
    model.save_pretrained(directory, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(TOKENIZER / f, directory / f)


def convert(llama: Path, checkpoint: Path, out: Path) -> None:
    code = f"""
import sys
sys.path.insert(0, {str(llama / 'src')!r})
sys.argv = ['convert_hf_to_gguf.py', {str(checkpoint)!r}, '--outfile', {str(out)!r}, '--outtype', 'f32']
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'qwen2'
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=llama / "src", stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def reference_steps(llama: Path, gguf: Path, prompts: list[list[int]], banned: list[int]) -> list[dict]:
    """llama.cpp's top 5 after every prefix. `banned`: tokens that are not whole UTF-8 on their
    own; llama-server sends no probabilities when it samples one, so they are kept from being
    *sampled* with a logit bias, which does not touch the reported (pre-sampling) distribution."""
    port = free_port()
    server = subprocess.Popen([str(llama / "build/bin/llama-server"), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                               "-t", "2", "-c", "256", "-np", "1", "--no-warmup"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.1)
        steps = []
        for index, prompt in enumerate(prompts):
            for length in range(1, len(prompt) + 1):
                result = post(port, "/completion", {"prompt": prompt[:length], "n_predict": 1, "n_probs": 5, "temperature": 0,
                                                    "cache_prompt": False,
                                                    "logit_bias": [[t, False] for t in banned]})
                if "completion_probabilities" not in result:
                    raise SystemExit(f"{gguf.name}: unexpected /completion answer {json.dumps(result)[:500]}")
                top = result["completion_probabilities"][0]["top_logprobs"]
                steps.append({"prompt": index, "length": length, "top": [[t["id"], t["logprob"]] for t in top]})
        return steps
    finally:
        server.terminate()
        server.wait()



def quantise_and_record(types: dict[str, list[str]], reference_name: str, llama: Path, out_dir: Path, seed: int) -> None:
    """For each configuration named in `types` (same checkpoint and seed as this script's own files), the
    F32 conversion quantised by `llama-quantize` to each listed type, llama-server's reference steps for
    each file, and all of them in `out_dir / reference_name` (the format of reference.json). Used by the
    scripts that add types to the fixtures (make_q3k_iq4xs_fixtures.py, make_more_type_fixtures.py)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    banned = [i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
    out_dir.mkdir(parents=True, exist_ok=True)
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, (name, arch, overrides, _) in enumerate(CONFIGS):
            if name not in types:
                continue
            checkpoint = Path(tmp) / name
            build_checkpoint(name, arch, overrides, checkpoint, seed + number)
            base = Path(tmp) / f"{name}-F32.gguf"
            convert(llama, checkpoint, base)
            for qtype in types[name]:
                out = out_dir / f"{name}-{qtype}.gguf"
                subprocess.run([str(llama / "build/bin/llama-quantize"), str(base), str(out), qtype, "2"],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                steps = reference_steps(llama, out, prompts, banned)
                models.append({"file": out.name, "architecture": arch, "type": qtype, "steps": steps})
                print(f"{out.name}: {out.stat().st_size} bytes, {len(steps)} steps", file=sys.stderr)
    (out_dir / reference_name).write_text(json.dumps({"prompts": prompts, "models": models}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-cpp", type=Path, default=Path.home() / ".cache/moe-serve-llama-cpp")
    parser.add_argument("--out", type=Path, default=ROOT / "Tests/Fixtures/gguf")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    banned = [i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
    args.out.mkdir(parents=True, exist_ok=True)
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, (name, arch, overrides, types) in enumerate(CONFIGS):
            checkpoint = Path(tmp) / name
            build_checkpoint(name, arch, overrides, checkpoint, args.seed + number)
            base = Path(tmp) / f"{name}-F32.gguf"
            convert(args.llama_cpp, checkpoint, base)
            for qtype in types:
                out = args.out / f"{name}-{qtype}.gguf"
                subprocess.run([str(args.llama_cpp / "build/bin/llama-quantize"), str(base), str(out), qtype, "2"],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                steps = reference_steps(args.llama_cpp, out, prompts, banned)
                models.append({"file": out.name, "architecture": arch, "type": qtype, "steps": steps})
                print(f"{out.name}: {out.stat().st_size} bytes, {len(steps)} steps", file=sys.stderr)
    (args.out / "reference.json").write_text(json.dumps({"prompts": prompts, "models": models}, indent=1) + "\n")


if __name__ == "__main__":
    main()
