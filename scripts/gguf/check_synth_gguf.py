#!/usr/bin/env python3
"""Check `moe-serve synth --gguf-out` against llama.cpp (issue 20 item 5), on a small shape.

    /work/venv/bin/python scripts/gguf/check_synth_gguf.py [--shape deepseek-v2-lite-tiny] [--seed 7]
        [--llama-cpp ~/.cache/moe-serve-llama-cpp] [--moe-serve .build/release/moe-serve]

Run by hand, never in CI (gguf-py, transformers' converter dependencies and a built llama.cpp):

  1. `synth --gguf-out` writes the shape straight to a Q4_0 GGUF (`SyntheticGGUF.swift`);
  2. the reference route from the same seed: `synth --hf-out` (the bf16 checkpoint), llama.cpp's
     `convert_hf_to_gguf.py --outtype bf16` (pre-tokenizer named `qwen2`, as make_gguf_fixtures.py
     does: llama.cpp cannot identify the demo model's new 4,096-token vocabulary by its hash),
     then `llama-quantize --output-tensor-type q4_0 --token-embedding-type q4_0 … Q4_0`;
  3. the two files compared tensor by tensor (names, ggml shapes, types, bytes) and key by key;
  4. llama-server loads the synthetic file; at every prefix of three prompts its top-1 token
     (`/completion`, `n_probs` 5) against `moe-serve logits --all-positions` on the same file.

Exit status 1 when a tensor differs or llama-server does not load the file. Top-1 disagreements are
reported with llama.cpp's log-probability gap (the deepseek2 attention arithmetic is issue 21's
open gap, so near-ties may flip); they do not fail the check.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_gguf_fixtures import PROMPTS, ROOT, reference_steps  # noqa: E402


def float_fields(checkpoint: Path) -> None:
    """`synth` writes 1.0 as 1 (JSONSerialization); transformers 5's strict configs want floats."""
    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    for key in ["routed_scaling_factor", "rope_theta", "rms_norm_eps", "initializer_range"]:
        if isinstance(config.get(key), int):
            config[key] = float(config[key])
    for key, value in (config.get("rope_scaling") or {}).items():
        if isinstance(value, int) and key != "original_max_position_embeddings":
            config["rope_scaling"][key] = float(value)
    path.write_text(json.dumps(config, indent=1))


def convert_bf16(llama: Path, checkpoint: Path, out: Path) -> None:
    float_fields(checkpoint)
    code = f"""
import sys
sys.path.insert(0, {str(llama / 'src')!r})
sys.argv = ['convert_hf_to_gguf.py', {str(checkpoint)!r}, '--outfile', {str(out)!r}, '--outtype', 'bf16']
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'qwen2'
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=llama / "src", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read(path: Path):
    sys.path.insert(0, str(Path.home() / ".cache/moe-serve-llama-cpp/src/gguf-py"))
    import gguf
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    fields = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        value = field.contents() if hasattr(field, "contents") else None
        fields[name] = (field.types, value)
    return tensors, fields


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="deepseek-v2-lite-tiny")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--llama-cpp", type=Path, default=Path.home() / ".cache/moe-serve-llama-cpp")
    parser.add_argument("--moe-serve", type=Path, default=ROOT / ".build/release/moe-serve")
    args = parser.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours, hf, ref16, ref = tmp / "synth.gguf", tmp / "hf", tmp / "ref-bf16.gguf", tmp / "ref-q4_0.gguf"
        synth = [str(args.moe_serve), "synth", "--shape", args.shape, "--seed", str(args.seed)]
        subprocess.run(synth + ["--gguf-out", str(ours)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(synth + ["--hf-out", str(hf)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        convert_bf16(args.llama_cpp, hf, ref16)
        subprocess.run([str(args.llama_cpp / "build/bin/llama-quantize"), "--output-tensor-type", "q4_0", "--token-embedding-type", "q4_0",
                        str(ref16), str(ref), "Q4_0", "2"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        # 3. Tensors and metadata.
        a_tensors, a_fields = read(ours)
        b_tensors, b_fields = read(ref)
        if set(a_tensors) != set(b_tensors):
            failures.append(f"tensor names differ: only ours {sorted(set(a_tensors) - set(b_tensors))[:5]}, only llama.cpp's {sorted(set(b_tensors) - set(a_tensors))[:5]}")
        same = 0
        for name in sorted(set(a_tensors) & set(b_tensors)):
            a, b = a_tensors[name], b_tensors[name]
            if a.tensor_type != b.tensor_type or list(a.shape) != list(b.shape):
                failures.append(f"{name}: ours {a.tensor_type.name} {list(a.shape)}, llama.cpp's {b.tensor_type.name} {list(b.shape)}")
            elif not np.array_equal(np.asarray(a.data).view(np.uint8), np.asarray(b.data).view(np.uint8)):
                failures.append(f"{name}: bytes differ ({a.tensor_type.name})")
            else:
                same += 1
        print(f"tensors: {same} of {len(b_tensors)} identical (name, ggml shape, type, bytes)")
        for key in sorted(set(a_fields) | set(b_fields)):
            if key not in a_fields:
                print(f"  metadata only in llama.cpp's file: {key} = {str(b_fields[key][1])[:80]}")
            elif key not in b_fields:
                print(f"  metadata only in ours: {key} = {str(a_fields[key][1])[:80]}")
            elif a_fields[key] != b_fields[key]:
                print(f"  metadata differs: {key}: ours {str(a_fields[key])[:80]}, llama.cpp's {str(b_fields[key])[:80]}")

        # 4. llama-server on our file against moe-serve on the same file.
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(ROOT / "DemoModel")
        prompts = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
        banned = [i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
        try:
            steps = reference_steps(args.llama_cpp, ours, prompts, banned)
        except Exception as error:
            failures.append(f"llama-server on the synthetic file: {error}")
            steps = []
        agree, total, gaps = 0, 0, []
        for index, prompt in enumerate(prompts):
            out = subprocess.run([str(args.moe_serve), "logits", "--model", str(ours), "--tokens", ",".join(map(str, prompt)), "--all-positions"],
                                 check=True, capture_output=True, text=True).stdout
            logits = np.array(json.loads(out)["logits"], dtype=np.float64)
            logprobs = logits - np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True)) - logits.max(axis=1, keepdims=True)
            for step in (s for s in steps if s["prompt"] == index):
                row = logprobs[step["length"] - 1]
                ours_top = int(np.argmax(np.where(np.isin(np.arange(len(row)), banned), -np.inf, row)))
                theirs = step["top"]
                total += 1
                agree += ours_top == theirs[0][0]
                gaps.append(max(abs(row[t] - lp) for t, lp in theirs))
                if ours_top != theirs[0][0]:
                    lp = dict((t, l) for t, l in theirs)
                    print(f"  prompt {index} length {step['length']}: llama.cpp top-1 {theirs[0][0]} ({theirs[0][1]:.3f}), ours {ours_top} "
                          f"({'llama.cpp logprob %.3f' % lp[ours_top] if ours_top in lp else 'not in llama.cpp top-5'})")
        if total:
            print(f"top-1 agreement with llama-server: {agree} of {total} prefixes; largest |logprob difference| over llama.cpp's top-5: {max(gaps):.3f}")
    for failure in failures:
        print("FAIL:", failure)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
