#!/usr/bin/env python3
"""Independent NumPy forward pass over a fixture directory, written from the semantics in
Tests/Fixtures/models/README.md and reading only the files on disk (config.json in either style,
safetensors with or without an index). It is the executable form of those notes: if it agrees with
reference.json, the notes are what transformers does. Needs only numpy.

    python scripts/check_reference_numpy.py Tests/Fixtures/models/*/
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np


def load_tensors(d: Path) -> dict:
    idx = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else ["model.safetensors"]
    out = {}
    for f in files:
        raw = (d / f).read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            buf = raw[base + a:base + b]
            if info["dtype"] == "BF16":
                arr = (np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif info["dtype"] == "F16":
                arr = np.frombuffer(buf, dtype=np.float16).astype(np.float32)
            elif info["dtype"] == "F32":
                arr = np.frombuffer(buf, dtype=np.float32)
            else:
                raise ValueError(f"{f}: {name}: dtype {info['dtype']}")
            out[name] = arr.reshape(info["shape"]).astype(np.float64)
    return out


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def rope(x, pos, theta):  # x [T, H, D]; rotate_half (non-interleaved) convention
    D = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, D, 2) / D)
    ang = np.outer(pos, inv)  # [T, D/2]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return x * cos + np.concatenate([-x2, x1], -1) * sin


def forward(d: Path, tokens):
    c = json.loads((d / "config.json").read_text())
    W = load_tensors(d)
    arch = c["architectures"][0]
    theta = c["rope_parameters"]["rope_theta"] if "rope_parameters" in c else c["rope_theta"]
    H, KV, hid = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
    Dh = c.get("head_dim") or hid // H
    eps = c["rms_norm_eps"]
    E = c.get("num_local_experts") if arch == "MixtralForCausalLM" else c.get("num_experts", c.get("num_local_experts"))
    K = c["num_experts_per_tok"]
    T = len(tokens)
    pos = np.arange(T)
    x = W["model.embed_tokens.weight"][tokens]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"], eps)
        lin = lambda name, v: v @ W[p + name + ".weight"].T + W.get(p + name + ".bias", 0.0)
        q, k, v = lin("self_attn.q_proj", h), lin("self_attn.k_proj", h), lin("self_attn.v_proj", h)
        if arch == "OlmoeForCausalLM":  # norm over the whole projection, then clamp, then reshape
            q = rms(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rms(k, W[p + "self_attn.k_norm.weight"], eps)
            if c.get("clip_qkv") is not None:
                q, k, v = (np.clip(t, -c["clip_qkv"], c["clip_qkv"]) for t in (q, k, v))
        q, k, v = q.reshape(T, H, Dh), k.reshape(T, KV, Dh), v.reshape(T, KV, Dh)
        if arch == "Qwen3MoeForCausalLM":  # per-head norm over head_dim
            q = rms(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rms(k, W[p + "self_attn.k_norm.weight"], eps)
        q, k = rope(q, pos, theta), rope(k, pos, theta)
        g = H // KV  # query head i uses kv head i // g
        att = np.zeros((T, H, Dh))
        for i in range(H):
            s = q[:, i] @ k[:, i // g].T / np.sqrt(Dh)
            s = s + np.triu(np.full((T, T), -np.inf), 1)
            att[:, i] = softmax(s) @ v[:, i // g]
        x = x + lin("self_attn.o_proj", att.reshape(T, H * Dh))
        h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        if arch == "MixtralForCausalLM":
            gate, pre, names = W[p + "block_sparse_moe.gate.weight"], p + "block_sparse_moe.experts.", ("w1", "w3", "w2")
        else:
            gate, pre, names = W.get(p + "mlp.gate.weight"), p + "mlp.experts.", ("gate_proj", "up_proj", "down_proj")
        if gate is None:  # Qwen dense layer (mlp_only_layers / decoder_sparse_step)
            y = silu(h @ W[p + "mlp.gate_proj.weight"].T) * (h @ W[p + "mlp.up_proj.weight"].T)
            x = x + y @ W[p + "mlp.down_proj.weight"].T
            continue
        probs = softmax(h @ gate.T)  # softmax over all experts, then top-k
        y = np.zeros_like(h)
        for t in range(T):
            top = np.argsort(-probs[t], kind="stable")[:K]
            wts = probs[t, top]
            if arch == "MixtralForCausalLM" or c.get("norm_topk_prob", False):
                wts = wts / wts.sum()
            for e, wgt in zip(top, wts):
                a = silu(h[t] @ W[f"{pre}{e}.{names[0]}.weight"].T) * (h[t] @ W[f"{pre}{e}.{names[1]}.weight"].T)
                y[t] += wgt * (a @ W[f"{pre}{e}.{names[2]}.weight"].T)
        if arch == "Qwen2MoeForCausalLM":  # shared expert with sigmoid gate (zero-width => 0)
            se = p + "mlp.shared_expert."
            s = silu(h @ W[se + "gate_proj.weight"].T) * (h @ W[se + "up_proj.weight"].T) @ W[se + "down_proj.weight"].T
            y += 1 / (1 + np.exp(-(h @ W[p + "mlp.shared_expert_gate.weight"].T))) * s
        x = x + y
    x = rms(x, W["model.norm.weight"], eps)
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    assert ("lm_head.weight" not in W) == bool(c.get("tie_word_embeddings", False)), "tie flag vs tensors"
    return x @ head.T


def main():
    worst = 0.0
    ok = True
    for arg in sys.argv[1:]:
        d = Path(arg)
        ref = json.loads((d / "reference.json").read_text())
        logits = forward(d, ref["prompt"])
        diff = float(np.abs(logits - np.array(ref["logits"])).max())
        seq = list(ref["prompt"])
        for _ in range(len(ref["greedy"])):  # no cache: recompute the whole sequence each step
            seq.append(int(np.argmax(forward(d, seq)[-1])))
        same = seq[len(ref["prompt"]):] == ref["greedy"]
        ok &= diff <= 1e-3 and same
        worst = max(worst, diff)
        print(f"{d.name:32s} max|dlogit| {diff:.2e}  greedy {'same' if same else 'DIFFERENT'}")
    print(f"worst {worst:.2e}: {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
