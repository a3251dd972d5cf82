#!/usr/bin/env python3
"""How well a shadow of MoE layer l+1 -- its attention and router run on layer l's output with only the
experts of layer l that were resident -- predicts layer l+1's experts, against the cross-layer gate (router
l+1 on layer l's gate input) and the fitted selection probes (`--predictor-probes`). This is what
`--shadow-routing on` computes at run time (Sources/MoEModels/ShadowRouting.swift).

    /work/venv/bin/python scripts/shadow_routing_probe.py --model /work/bench/demo-hf \
        --probes /work/bench/probes123.safetensors [--cache 64] [--tokens 8000]

The held-out tokens are train_predictor_probes.py's (the demo corpus's hold-out split). Which of a layer's
chosen experts count as resident comes from an LRU cache of --cache experts over all layers, replayed in
reading order. The shadow's attention uses the exact cached keys and values of earlier positions and the
row's own (estimated) key and value, as `AttentionLayer.shadowForward` does. Prints top-k agreement per
layer and, as train_predictor_probes.py does, the guesses that cost a read one and two layers ahead.
With --surrogates it also fits expert surrogates (scripts/fit_expert_surrogates.py) and scores shadows run
on them: as the layer routes, after the residents with the missing filled in, and two shadows chained
(docs/PREDICTOR.md, session 36). --random-prompts scores bench decode's workload instead of held-out text.
Needs torch, transformers, safetensors and numpy (the venv of scripts/make_reference_models.py).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from collections import OrderedDict
import train_predictor_probes as tp
import fit_expert_surrogates as fes
from safetensors.numpy import load_file

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory (a Qwen3-MoE)")
parser.add_argument("--probes", required=True, help="selection probes fitted one and two layers ahead")
parser.add_argument("--cache", type=int, default=64, help="experts the LRU cache holds over all layers (64: a quarter of the demo's)")
parser.add_argument("--tokens", type=int, default=8000, help="held-out tokens to replay")
parser.add_argument("--surrogates", type=int, default=0, metavar="TOKENS",
                    help="also fit each expert's output as a linear map of its input (and as its mean) on TOKENS "
                         "training-split tokens, and score shadows that use these surrogates: before any expert runs "
                         "(when the layer routes) and, for the missing experts, after the residents")
parser.add_argument("--ranks", default="8,32", help="ranks of the fitted linear surrogates (with --surrogates)")
parser.add_argument("--random-prompts", action="store_true",
                    help="score on what `moe-serve bench decode` runs instead of held-out text: seeded random prompts "
                         "of 32 tokens, each continued by 128 tokens the model samples at temperature 1")
args = parser.parse_args()
torch.set_num_threads(2)
MODEL = args.model
CACHE = args.cache
EVAL_TOKENS = args.tokens
tok = AutoTokenizer.from_pretrained(MODEL)
model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
cfg = model.config
L, E, K, H = cfg.num_hidden_layers, cfg.num_experts, cfg.num_experts_per_tok, cfg.hidden_size
NH, NKV, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

def rot(x):
    return torch.cat((-x[..., D // 2:], x[..., :D // 2]), -1)

def qkv(layer, h, cos, sin):
    a = layer.self_attn
    xa = layer.input_layernorm(h)
    T = h.shape[0]
    q = a.q_norm(a.q_proj(xa).view(T, NH, D)); k = a.k_norm(a.k_proj(xa).view(T, NKV, D)); v = a.v_proj(xa).view(T, NKV, D)
    c, s = cos[:, None, :], sin[:, None, :]
    return q * c + rot(q) * s, k * c + rot(k) * s, v

def attend(layer, q, k, v, kself=None, vself=None):
    """Causal attention; with kself/vself each position attends to the exact past and its own (shadow) key."""
    T = q.shape[0]
    rep = NH // NKV
    kr, vr = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    S = torch.einsum("thd,shd->hts", q, kr) / D ** 0.5
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    if kself is not None:
        ks, vs = kself.repeat_interleave(rep, 1), vself.repeat_interleave(rep, 1)
        diag = (q * ks).sum(-1).T / D ** 0.5  # [h, t]
        S = S.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(-1), float("-inf"))
        idx = torch.arange(T)
        S[:, idx, idx] = diag
        P = torch.softmax(S, -1)
        Pd = P[:, idx, idx].clone()
        P[:, idx, idx] = 0
        out = torch.einsum("hts,shd->thd", P, vr) + Pd.T[:, :, None] * vs
    else:
        S = S.masked_fill(~mask, float("-inf"))
        out = torch.einsum("hts,shd->thd", torch.softmax(S, -1), vr)
    return layer.self_attn.o_proj(out.reshape(T, NH * D))

def moe(layer, h_mid):
    x = layer.post_attention_layernorm(h_mid)
    logits = x @ layer.mlp.gate.weight.T
    probs = torch.softmax(logits, -1)
    w, idx = torch.topk(probs, K, -1)
    w = w / w.sum(-1, keepdim=True)
    ex = layer.mlp.experts
    T = h_mid.shape[0]
    contrib = torch.zeros(T, K, H)
    raw = torch.zeros(T, K, H)
    for j in range(K):
        gu = torch.einsum("th,toh->to", x, ex.gate_up_proj[idx[:, j]])
        g, u = gu.chunk(2, -1)
        y = torch.einsum("ti,thi->th", torch.nn.functional.silu(g) * u, ex.down_proj[idx[:, j]])
        raw[:, j] = y
        contrib[:, j] = y * w[:, j:j + 1]
    return x, logits, idx, w, contrib, raw

def forward(ids):
    T = len(ids)
    h = model.model.embed_tokens(torch.tensor(ids))
    cos, sin = model.model.rotary_emb(h[None], torch.arange(T)[None])
    cos, sin = cos[0], sin[0]
    rec = []
    for layer in model.model.layers:
        q, k, v = qkv(layer, h, cos, sin)
        h_mid = h + attend(layer, q, k, v)
        x, logits, idx, w, contrib, raw = moe(layer, h_mid)
        rec.append(dict(h_in=h, k=k, v=v, h_mid=h_mid, x=x, logits=logits, idx=idx, w=w, contrib=contrib, raw=raw))
        h = h_mid + contrib.sum(1)
    out = model.lm_head(model.model.norm(h))
    return rec, out, cos, sin

files = tp.corpus_files(tp.DEFAULT_CORPUS)
held = [p for p in files if tp.is_validation(os.path.relpath(p, tp.DEFAULT_CORPUS), 2.0)]
seqs, n = [], 0
def random_prompt_sequences():
    """What bench decode runs: 32 random token ids, then 128 sampled at temperature 1."""
    seed = 0
    while True:
        seed += 1
        g = torch.Generator().manual_seed(seed)
        prompt = torch.randint(1, cfg.vocab_size, (1, 32), generator=g)
        torch.manual_seed(seed)
        out = model.generate(prompt, max_new_tokens=128, do_sample=True, temperature=1.0, top_k=None, top_p=None,
                             pad_token_id=0, eos_token_id=None)
        yield out[0].tolist()

def held_out_sequences():
    for p in held:
        try:
            ids = tok(open(p, encoding="utf-8").read())["input_ids"][:256]
        except Exception:
            continue
        if len(ids) >= 16:
            yield ids

with torch.no_grad():
    for ids in (random_prompt_sequences() if args.random_prompts else held_out_sequences()):
        rec, out, cos, sin = forward(ids)
        if not seqs:
            ref = model(torch.tensor([ids])).logits[0]
            print("max |manual - hf| logits:", float((ref - out).abs().max()), file=sys.stderr)
        seqs.append((rec, cos, sin))
        n += len(ids)
        if n >= EVAL_TOKENS:
            break
print(f"{len(seqs)} sequences, {n} tokens", file=sys.stderr)

# Surrogates of each expert's output y = E_e(x) (x: its normalised input), fitted on training-split tokens:
# its mean, and a ridge-regression linear map of rank r (reduced-rank: the fitted values projected on their top r
# principal directions; scripts/fit_expert_surrogates.py). surrogate[r][l][e] = (A [H, H], b [H], ...); r = 0 is the
# mean alone (A = 0).
RANKS = [int(r) for r in args.ranks.split(",") if r] if args.surrogates else []
surrogate = {}
if args.surrogates:
    train = [p for p in files if not tp.is_validation(os.path.relpath(p, tp.DEFAULT_CORPUS), 2.0)]
    xs, ys, seen = fes.collect(model, tok, train, args.surrogates)
    print(f"surrogates fitted on {seen} training-split tokens", file=sys.stderr)
    surrogate = fes.fit(xs, ys, H, RANKS)

def surrogate_outputs(r, l, x, idx):
    """[T, K, H]: the rank-r surrogate of each chosen expert's output (r = 0: its mean)."""
    out = torch.zeros(idx.shape[0], idx.shape[1], H)
    for j in range(idx.shape[1]):
        for e in idx[:, j].unique().tolist():
            m = idx[:, j] == e
            A, b = surrogate[r][l][e][:2]
            out[m, j] = x[m] @ A + b
    return out

# Which of each layer's chosen experts are resident: an LRU cache of CACHE experts over all layers, in order.
used = np.zeros((L, n, E), dtype=np.float32)
present = [np.zeros((n, K), dtype=bool) for _ in range(L)]
cache = OrderedDict()
offsets = []
t0 = 0
for rec, _, _ in seqs:
    T = rec[0]["idx"].shape[0]
    offsets.append(t0)
    for t in range(T):
        for l in range(L):
            chosen = rec[l]["idx"][t].tolist()
            for j, e in enumerate(chosen):
                used[l, t0 + t, e] = 1
                present[l][t0 + t, j] = (l, e) in cache
            for e in chosen:
                cache[(l, e)] = True; cache.move_to_end((l, e))
                if len(cache) > CACHE:
                    cache.popitem(last=False)
    t0 += T
print("hit rate of the LRU:", float(np.mean([p.mean() for p in present])), file=sys.stderr)

probes = load_file(args.probes)
shadow_x = {}
# The shadow of l+1 (its h'' and normalised x''), per surrogate variant and sequence, to chain a second layer.
chain_start = {}
scorers = {name: {} for name in ["gate (cross-layer)", "probe 1 ahead", "shadow: no experts", "shadow: resident experts",
                                 "shadow: resident, renormalised", "shadow: no attention, resident", "shadow: all experts (exact)"]}
for rank in surrogate:
    label = "mean" if rank == 0 else f"linear rank {rank}"
    scorers[f"early shadow: {label} of every expert"] = {}
    scorers[f"shadow: residents, {label} of the missing"] = {}
normalised = {}
with torch.no_grad():
    for l in range(L - 1):
        t = l + 1
        nxt = model.model.layers[t]
        parts = {name: [] for name in scorers}
        for si, (rec, cos, sin) in enumerate(seqs):
            r, r1 = rec[l], rec[t]
            T = r["idx"].shape[0]
            o = offsets[si]
            pres = torch.tensor(present[l][o:o + T], dtype=torch.float32)
            parts["gate (cross-layer)"].append(torch.softmax(r["x"] @ nxt.mlp.gate.weight.T, -1))
            pw = {k: probes[f"select.{t}.from.{l}.{k}"] for k in ("hidden.weight", "hidden.bias", "weight", "bias")}
            parts["probe 1 ahead"].append(torch.tensor(tp.mlp_scores(r["x"].numpy(), pw["hidden.weight"], pw["hidden.bias"], pw["weight"], pw["bias"])))
            wsum = (r["w"] * pres).sum(-1, keepdim=True)
            variants = {
                "shadow: no experts": r["h_mid"],
                "shadow: resident experts": r["h_mid"] + (r["contrib"] * pres[:, :, None]).sum(1),
                "shadow: resident, renormalised": r["h_mid"] + (r["contrib"] * pres[:, :, None]).sum(1) / wsum.clamp(min=1e-6),
                "shadow: all experts (exact)": r["h_mid"] + r["contrib"].sum(1),
            }
            for rank in surrogate:
                est = surrogate_outputs(rank, l, r["x"], r["idx"]) * r["w"][:, :, None]
                label = "mean" if rank == 0 else f"linear rank {rank}"
                variants[f"early shadow: {label} of every expert"] = r["h_mid"] + est.sum(1)
                variants[f"shadow: residents, {label} of the missing"] = r["h_mid"] + (r["contrib"] * pres[:, :, None] + est * (1 - pres[:, :, None])).sum(1)
            for name, hs in variants.items():
                q, k, v = qkv(nxt, hs, cos, sin)
                h2 = hs + attend(nxt, q, r1["k"], r1["v"], kself=k, vself=v)
                x2 = nxt.post_attention_layernorm(h2)
                parts[name].append(torch.softmax(x2 @ nxt.mlp.gate.weight.T, -1))
                if name == "shadow: resident experts":
                    shadow_x.setdefault(t, []).append(x2)
                if RANKS and name.endswith((f"linear rank {RANKS[0]} of every expert", f"linear rank {RANKS[0]} of the missing")):
                    chain_start.setdefault((name, t), []).append((h2, x2))
            hs = variants["shadow: resident experts"]
            parts["shadow: no attention, resident"].append(torch.softmax(nxt.post_attention_layernorm(hs) @ nxt.mlp.gate.weight.T, -1))
        for name in scorers:
            scorers[name][t] = torch.cat(parts[name]).numpy()
        # The early shadow's choice scored by its normalised top-k weights (zero elsewhere), so that
        # the floors below are floors on the weight the engine sees in its routes.
        for name in [n for n in scorers if n.startswith("early shadow: linear")]:
            normalised[name + ", by normalised weight"] = normalised.get(name + ", by normalised weight", {})
            probs = torch.tensor(scorers[name][t])
            w, idx = torch.topk(probs, K, -1)
            normalised[name + ", by normalised weight"][t] = torch.zeros_like(probs).scatter(1, idx, w / w.sum(-1, keepdim=True)).numpy()

print(f"\nTop-{K} agreement with layer l+1's routing, per target layer ({n} held-out tokens, LRU of {CACHE} experts):")
print("| scorer | " + " | ".join(f"{t}←{t-1}" for t in range(1, L)) + " | mean |")
print("|---|" + "---|" * L)
for name, sc in scorers.items():
    ag = [tp.agreement(tp.top_k(sc[t], K), tp.top_k(used[t], K)) for t in range(1, L)]
    print(f"| {name} | " + " | ".join(f"{a:.3f}" for a in ag) + f" | {np.mean(ag):.3f} |")
# Agreement restricted to experts that cost a read.
print(f"\nGuesses that cost a read (LRU of {CACHE}; per floor: reads per token / share used / share of misses covered), targets 1..{L-1}:")
print("| scorer | " + " | ".join(f"floor {x:g}" for x in tp.THRESHOLDS) + " |")
print("|---|" + "---|" * len(tp.THRESHOLDS))
for name, sc in list(scorers.items()) + list(normalised.items()):
    res = tp.replay_reads(sc, used, CACHE, K)
    print(f"| {name} | " + " | ".join(f"{a:.2f} / {b:.2f} / {c:.2f}" for a, b, c in res.values()) + " |")

# Two ahead: layer l+2 guessed at layer l's time, from layer l's gate input (the probes), or from the shadow's
# estimate of layer l+1's gate input (the one-ahead probe l+1 -> l+2 applied to it), or from the exact one.
two = {"probe 2 ahead (from l)": {}, "probe 1 ahead on the shadow of l+1": {}, "probe 1 ahead on the exact l+1 (bound)": {}}
def probe(t, s_, x):
    pw = {k: probes[f"select.{t}.from.{s_}.{k}"] for k in ("hidden.weight", "hidden.bias", "weight", "bias")}
    return tp.mlp_scores(x, pw["hidden.weight"], pw["hidden.bias"], pw["weight"], pw["bias"])
with torch.no_grad():
    for l in range(L - 2):
        t = l + 2
        xl = torch.cat([rec[l]["x"] for rec, _, _ in seqs]).numpy()
        xl1 = torch.cat([rec[l + 1]["x"] for rec, _, _ in seqs]).numpy()
        xs = torch.cat(shadow_x[l + 1]).numpy()
        two["probe 2 ahead (from l)"][t] = probe(t, l, xl)
        two["probe 1 ahead on the shadow of l+1"][t] = probe(t, l + 1, xs)
        two["probe 1 ahead on the exact l+1 (bound)"][t] = probe(t, l + 1, xl1)
        # Two shadows chained: the shadow of l+1 routes, its chosen experts' surrogates complete its
        # output, and the shadow of l+2 runs on that (what a shadow two layers ahead would do).
        for start in sorted({name for name, _ in chain_start}):
            label = f"chained shadow from '{start}'"
            parts = []
            mid = model.model.layers[l + 1]
            nxt2 = model.model.layers[t]
            for si, (rec, cos, sin) in enumerate(seqs):
                h2, x2 = chain_start[(start, l + 1)][si]
                probs = torch.softmax(x2 @ mid.mlp.gate.weight.T, -1)
                w, idx = torch.topk(probs, K, -1)
                w = w / w.sum(-1, keepdim=True)
                hs = h2 + (surrogate_outputs(RANKS[0], l + 1, x2, idx) * w[:, :, None]).sum(1)
                q, k, v = qkv(nxt2, hs, cos, sin)
                h3 = hs + attend(nxt2, q, rec[t]["k"], rec[t]["v"], kself=k, vself=v)
                parts.append(torch.softmax(nxt2.post_attention_layernorm(h3) @ nxt2.mlp.gate.weight.T, -1))
            two.setdefault(label, {})[t] = torch.cat(parts).numpy()
print(f"\nTwo ahead, top-{K} agreement per target layer:")
for name, sc in two.items():
    ag = [tp.agreement(tp.top_k(sc[t], K), tp.top_k(used[t], K)) for t in range(2, L)]
    print(f"| {name} | " + " | ".join(f"{a:.3f}" for a in ag) + f" | {np.mean(ag):.3f} |")
print(f"\nTwo ahead, guesses that cost a read, targets 2..{L-1}:")
for name, sc in two.items():
    res = tp.replay_reads(sc, used, CACHE, K + 1)
    print(f"| {name} | " + " | ".join(f"{a:.2f} / {b:.2f} / {c:.2f}" for a, b, c in res.values()) + " |")
