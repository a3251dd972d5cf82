#!/usr/bin/env python3
"""Check that hf_to_gguf.py + llama.cpp reproduce an OLMoE fixture's logits.

    python check_gguf_logits.py [FIXTURE_DIR ...] [--work DIR] [--tol 1e-2]

For each fixture (default: the two OLMoE fixtures under Tests/Fixtures/models):
  1. a NumPy float32 forward pass of the HF checkpoint (OLMoE semantics as in
     Tests/Fixtures/models/README.md) is compared with the committed transformers logits
     (reference.json), which validates the NumPy model;
  2. where llama.cpp's OLMoE graph computes something else (norm_topk_prob=true: llama.cpp never
     renormalises; clip_qkv: llama.cpp never clamps), the NumPy model is re-run with llama.cpp's
     semantics and that becomes the reference for step 3 (reported as such);
  3. the checkpoint is converted twice (bf16 weights kept, and --outtype f32) and llama.cpp's
     logits for every prompt position are compared with the reference: max |diff|, max |diff| /
     max |logit|, and whether the argmax agrees at every position. Three llama.cpp runs: bf16
     weights (llama.cpp rounds activations to bf16 for bf16 dot products), f32 weights with the
     default f16 KV cache, and f32 weights with an f32 KV cache (which isolates the converter: it
     should agree to float32 rounding).
A fixture llama.cpp cannot load (GQA OLMoE: its k_norm has n_embd entries) is reported, not failed.
Exit status 0 when every loadable fixture is within --tol (relative to the logit scale).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hf_to_gguf import SafetensorsIndex, to_f32  # noqa: E402

REPO = HERE.parent.parent
DEFAULT_FIXTURES = [REPO / "Tests/Fixtures/models/olmoe-noclip-top4-norm",
                    REPO / "Tests/Fixtures/models/olmoe-clipqkv"]


def load_weights(d: Path) -> dict[str, np.ndarray]:
    st = SafetensorsIndex(d)
    return {n: to_f32(st.read(n), st.dtype(n)) for n in st.entries}


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_neox(x, theta):  # x [T, H, D], HF rotate_half
    T, _, D = x.shape
    inv = 1.0 / (theta ** (np.arange(0, D, 2, dtype=np.float64) / D))
    ang = np.arange(T)[:, None] * inv[None, :]
    cos = np.cos(np.concatenate([ang, ang], -1)).astype(np.float32)[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], -1)).astype(np.float32)[:, None, :]
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + np.concatenate([-x2, x1], -1) * sin


def olmoe_forward(cfg: dict, W: dict[str, np.ndarray], ids: list[int], *, norm_topk: bool, clip) -> np.ndarray:
    H = cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads") or H
    E = cfg["hidden_size"]
    D = cfg.get("head_dim") or E // H
    eps = cfg.get("rms_norm_eps", 1e-5)
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    k_top = cfg["num_experts_per_tok"]
    T = len(ids)
    x = W["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}."
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = rmsnorm(h @ W[p + "self_attn.q_proj.weight"].T, W[p + "self_attn.q_norm.weight"], eps)
        k = rmsnorm(h @ W[p + "self_attn.k_proj.weight"].T, W[p + "self_attn.k_norm.weight"], eps)
        v = h @ W[p + "self_attn.v_proj.weight"].T
        if clip is not None:
            q, k, v = (np.clip(t, -clip, clip) for t in (q, k, v))
        q = rope_neox(q.reshape(T, H, D), theta)
        k = rope_neox(k.reshape(T, KV, D), theta)
        v = v.reshape(T, KV, D)
        g = H // KV
        out = np.empty((T, H, D), np.float32)
        for hh in range(H):
            s = q[:, hh] @ k[:, hh // g].T / np.sqrt(D) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, hh // g]
        x = x + out.reshape(T, H * D) @ W[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        logits = h @ W[p + "mlp.gate.weight"].T
        pr = np.exp(logits - logits.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        y = np.zeros_like(x)
        for t in range(T):
            top = np.argsort(-pr[t])[:k_top]
            wts = pr[t, top]
            if norm_topk:
                wts = wts / wts.sum()
            for e, wt in zip(top, wts):
                e_p = f"{p}mlp.experts.{e}."
                a = h[t] @ W[e_p + "gate_proj.weight"].T
                b = h[t] @ W[e_p + "up_proj.weight"].T
                y[t] += wt * ((a / (1 + np.exp(-a)) * b) @ W[e_p + "down_proj.weight"].T)
        x = x + y
    x = rmsnorm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight") if not cfg.get("tie_word_embeddings") else None
    return x @ (head if head is not None else W["model.embed_tokens.weight"]).T


def llama_cpp_logits(gguf_path: Path, ids: list[int], f32_kv: bool = False) -> np.ndarray:
    """Logits for every position, from llama.cpp through llama-cpp-python (run in a child process
    so that a failed load cannot take this one down)."""
    code = r"""
import sys, json, numpy as np
import llama_cpp
from llama_cpp import Llama
ids = json.loads(sys.argv[2])
kv = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) if sys.argv[4] == "1" else {}
llm = Llama(model_path=sys.argv[1], n_ctx=max(64, len(ids)), n_batch=len(ids), n_ubatch=len(ids),
            n_threads=2, logits_all=True, verbose=True, **kv)
llm.eval(ids)
np.save(sys.argv[3], np.array(llm.scores[:len(ids)], dtype=np.float32))
"""
    out = gguf_path.with_suffix(".kvf32.logits.npy" if f32_kv else ".logits.npy")
    r = subprocess.run([sys.executable, "-c", code, str(gguf_path), json.dumps(ids), str(out), "1" if f32_kv else "0"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        lines = (r.stderr + r.stdout).strip().splitlines()
        errs = [ln for ln in lines if "error" in ln.lower()]
        raise RuntimeError(errs[0] if errs else (lines[-1] if lines else f"exit {r.returncode}"))
    return np.load(out)


def compare(a: np.ndarray, ref: np.ndarray) -> dict:
    diff = float(np.max(np.abs(a - ref)))
    scale = float(np.max(np.abs(ref)))
    return {"max_abs_diff": diff, "logit_scale": scale, "rel": diff / scale,
            "argmax_agree": bool(np.all(a.argmax(-1) == ref.argmax(-1)))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixtures", nargs="*", type=Path, default=DEFAULT_FIXTURES)
    ap.add_argument("--work", type=Path, default=Path("/tmp/moe-serve-gguf-check"))
    ap.add_argument("--tol", type=float, default=1e-2, help="max |diff| / max |logit| allowed")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ok = True
    report = []
    for d in args.fixtures:
        cfg = json.loads((d / "config.json").read_text())
        ref = json.loads((d / "reference.json").read_text())
        ids, hf_logits = ref["prompt"], np.array(ref["logits"], dtype=np.float32)
        W = load_weights(d)
        clip = cfg.get("clip_qkv")
        norm = bool(cfg.get("norm_topk_prob"))
        np_hf = olmoe_forward(cfg, W, ids, norm_topk=norm, clip=clip)
        c0 = compare(np_hf, hf_logits)
        print(f"{d.name}: NumPy model vs transformers reference: max|diff| {c0['max_abs_diff']:.2e} "
              f"(scale {c0['logit_scale']:.2f}), argmax agree {c0['argmax_agree']}")
        entry = {"fixture": d.name, "numpy_vs_transformers": c0}
        if c0["rel"] > 1e-4:
            print("  NumPy model does not reproduce transformers: stopping this fixture")
            ok = False
            report.append(entry)
            continue
        if norm or clip is not None:
            ref_logits = olmoe_forward(cfg, W, ids, norm_topk=False, clip=None)
            ref_name = "NumPy with llama.cpp's OLMoE semantics (" + ", ".join(
                s for s, on in (("no top-k renormalisation", norm), ("no clip_qkv clamp", clip is not None)) if on) + ")"
            cx = compare(ref_logits, hf_logits)
            print(f"  llama.cpp semantics differ from transformers: {ref_name} vs transformers max|diff| "
                  f"{cx['max_abs_diff']:.2e}")
            entry["llamacpp_semantics_vs_transformers"] = cx
        else:
            ref_logits, ref_name = hf_logits, "transformers reference"
        entry["reference"] = ref_name
        for outtype, f32_kv in (("auto", False), ("f32", False), ("f32", True)):
            g = args.work / f"{d.name}.{outtype}.gguf"
            label = f"{outtype}{'_kvf32' if f32_kv else ''}"
            conv = subprocess.run([sys.executable, str(HERE / "hf_to_gguf.py"), "--force", "--outtype", outtype,
                                   str(d), str(g)], capture_output=True, text=True)
            if conv.returncode != 0:
                print(f"  convert ({outtype}) failed: {conv.stderr.strip().splitlines()[-1]}")
                ok = False
                continue
            try:
                lc = llama_cpp_logits(g, ids, f32_kv)
            except RuntimeError as e:
                print(f"  llama.cpp ({label} GGUF) cannot run it: {e}")
                entry[f"llamacpp_{label}"] = {"error": str(e)}
                break
            c = compare(lc, ref_logits)
            entry[f"llamacpp_{label}"] = c
            verdict = "OK" if c["rel"] <= args.tol and c["argmax_agree"] else "FAIL"
            ok &= verdict == "OK"
            wt = ("bf16 weights" if outtype == "auto" else "f32 weights") + (
                ", f32 KV cache" if f32_kv else ", f16 KV cache (default)")
            print(f"  llama.cpp ({wt}) vs {ref_name}: max|diff| {c['max_abs_diff']:.2e} = "
                  f"{c['rel']:.2e} of logit scale {c['logit_scale']:.2f}, argmax agree {c['argmax_agree']}: {verdict}")
        report.append(entry)
    (args.work / "report.json").write_text(json.dumps(report, indent=1))
    print(f"report: {args.work / 'report.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
