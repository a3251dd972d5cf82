#!/usr/bin/env python3
"""Build a tiny fine-grained FP8 checkpoint and its bf16 twin for MoEServe's FP8 tests.

Run by hand (never in CI), with torch and safetensors:

    python scripts/make_fp8_fixture.py      # writes Tests/Fixtures/fp8/{deepseekv3-fp8,deepseekv3-bf16-twin}

From the committed fixture `deepseekv3-qlora-groups-yarn`, every 2-D `*_proj.weight` (attention,
dense MLP, shared and routed experts; not embeddings, LM head, norms or routers, as DeepSeek-V3's
published FP8 checkpoint) becomes float8 e4m3fn with a float32 `*_proj.weight_scale_inv` per
16x16 block (`quantization_config.weight_block_size: [16, 16]`, so that the tiny matrices have
several blocks, partial ones included; DeepSeek uses 128x128). Each block's scale is a power of
two (2^ceil(log2(amax / 448))), so `fp8 x scale` is exactly representable in bf16: the twin holds
those dequantized weights as bf16, and a reader that dequantizes correctly gives bit-identical
weights and logits from both.
"""

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

BLOCK = 16
ROOT = Path(__file__).resolve().parent.parent / "Tests" / "Fixtures"
SOURCE = ROOT / "models" / "deepseekv3-qlora-groups-yarn"


def quantize(w: torch.Tensor):
    rows, cols = w.shape
    sr, sc = math.ceil(rows / BLOCK), math.ceil(cols / BLOCK)
    scales = torch.ones(sr, sc, dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(sr):
        for j in range(sc):
            block = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK].float()
            amax = float(block.abs().max())
            scale = 2.0 ** math.ceil(math.log2(amax / 448.0)) if amax > 0 else 1.0
            scales[i, j] = scale
            q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (block / scale).to(torch.float8_e4m3fn)
    dequantized = torch.empty(rows, cols, dtype=torch.float32)
    for i in range(sr):
        for j in range(sc):
            part = q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK].float() * scales[i, j]
            dequantized[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = part
    twin = dequantized.to(torch.bfloat16)
    assert torch.equal(twin.float(), dequantized), "dequantized weights must be exact in bf16"
    return q, scales, twin


def main():
    tensors = {}
    for shard in sorted(SOURCE.glob("*.safetensors")):
        tensors.update(load_file(shard))
    fp8, twin = {}, {}
    quantized = 0
    for name, w in sorted(tensors.items()):
        if name.endswith("_proj.weight") and w.dim() == 2:
            q, scales, deq = quantize(w)
            fp8[name], fp8[name + "_scale_inv"], twin[name] = q, scales, deq
            quantized += 1
        else:
            fp8[name], twin[name] = w, w
    config = json.loads((SOURCE / "config.json").read_text())
    for out, weights, extra in (("deepseekv3-fp8", fp8, {"quantization_config": {
            "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [BLOCK, BLOCK]}}),
            ("deepseekv3-bf16-twin", twin, {})):
        d = ROOT / "fp8" / out
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(dict(sorted({**config, **extra}.items())), indent=2) + "\n")
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{out}: {len(weights)} tensors, {size / 1024:.1f} KiB")
    print(f"{quantized} weights as float8 e4m3fn with {BLOCK}x{BLOCK} block scales")


if __name__ == "__main__":
    main()
