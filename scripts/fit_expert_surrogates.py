#!/usr/bin/env python3
"""Fits a small linear surrogate of every routed expert's output and writes them as
`expert-surrogates.safetensors`, which MoEServe uses for an early shadow of the next layer
(docs/PREDICTOR.md, session 36).

    /work/venv/bin/python scripts/fit_expert_surrogates.py --model /work/bench/demo-hf \
        --out /work/bench/demo-hf/expert-surrogates.safetensors [--rank 8] [--tokens 16000]

For expert e of MoE layer l, with x its input (the layer's normalised gate input, [H]) and
y = E_e(x) its output before the routing weight ([H]):

    y ≈ bias[e] + Σ_j (in[e, j] · x) · out[e, j]          (j < rank)

fitted by ridge regression on the tokens routed to it, then reduced to `rank` (the fitted values
projected on their top principal directions). The tokens are the training split of the corpus the
demo model and its probes were trained on (train_predictor_probes.py); the held-out split is left
for scripts/shadow_routing_probe.py, which scores these surrogates.

File: bf16 (or, with --dtype f32, f32) `surrogate.<l>.in` [E, rank, H], `surrogate.<l>.out` [E, rank, H] and
`surrogate.<l>.bias` [E, H] for each MoE layer l (0-based decoder layer index). An expert no
training token chose keeps zeros (its surrogate adds nothing). For a Qwen3-MoE checkpoint
(stacked `gate_up_proj` / `down_proj` experts, as transformers 5 stores them).
Needs torch, transformers, safetensors and numpy (the venv of scripts/make_reference_models.py).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch


def expert_outputs(layer, x, idx):
    """[T, K, H]: the raw output of each chosen expert (idx [T, K]) on x [T, H]."""
    ex = layer.mlp.experts
    out = torch.zeros(idx.shape[0], idx.shape[1], x.shape[1])
    for j in range(idx.shape[1]):
        gu = torch.einsum("th,toh->to", x, ex.gate_up_proj[idx[:, j]])
        g, u = gu.chunk(2, -1)
        out[:, j] = torch.einsum("ti,thi->th", torch.nn.functional.silu(g) * u, ex.down_proj[idx[:, j]])
    return out


def collect(model, tokenizer, paths, max_tokens, window=256):
    """Per MoE layer and expert: the inputs and raw outputs of the tokens routed to it, over up to
    `max_tokens` tokens of `paths` (each file's first `window` tokens). Returns (xs, ys, seen):
    xs[l][e] and ys[l][e] are lists of [n, H] tensors."""
    cfg = model.config
    L, E, K = cfg.num_hidden_layers, cfg.num_experts, cfg.num_experts_per_tok
    xs = [[[] for _ in range(E)] for _ in range(L)]
    ys = [[[] for _ in range(E)] for _ in range(L)]
    captured = [None] * L
    hooks = [layer.mlp.register_forward_pre_hook(lambda mod, args, i=i: captured.__setitem__(i, args[0].reshape(-1, args[0].shape[-1]).detach()))
             for i, layer in enumerate(model.model.layers)]
    seen = 0
    with torch.no_grad():
        for path in paths:
            try:
                ids = tokenizer(open(path, encoding="utf-8").read())["input_ids"][:window]
            except (UnicodeDecodeError, OSError):
                continue
            if len(ids) < 16:
                continue
            model(torch.tensor([ids]))
            for l, layer in enumerate(model.model.layers):
                x = captured[l]
                idx = torch.topk(x @ layer.mlp.gate.weight.T, K, -1).indices
                y = expert_outputs(layer, x, idx)
                for j in range(K):
                    for e in idx[:, j].unique().tolist():
                        m = idx[:, j] == e
                        xs[l][e].append(x[m])
                        ys[l][e].append(y[m, j])
            seen += len(ids)
            if seen >= max_tokens:
                break
    for hook in hooks:
        hook.remove()
    return xs, ys, seen


def fit(xs, ys, hidden, ranks, ridge=1e-2):
    """Per rank r (0: the mean output alone), per layer and expert: (A [H, H] of rank r, b [H]) with
    y ≈ x @ A + b, and the factors (inn [r, H], out [r, H]) with A = inn.T @ out."""
    fitted = {r: [[None] * len(xs[0]) for _ in xs] for r in [0] + list(ranks)}
    for l in range(len(xs)):
        for e in range(len(xs[l])):
            X = torch.cat(xs[l][e]) if xs[l][e] else torch.zeros(0, hidden)
            Y = torch.cat(ys[l][e]) if ys[l][e] else torch.zeros(0, hidden)
            mu_x = X.mean(0) if len(X) else torch.zeros(hidden)
            mu_y = Y.mean(0) if len(Y) else torch.zeros(hidden)
            fitted[0][l][e] = (torch.zeros(hidden, hidden), mu_y, torch.zeros(0, hidden), torch.zeros(0, hidden))
            if not ranks:
                continue
            Xc, Yc = X - mu_x, Y - mu_y
            lam = ridge * float((Xc * Xc).sum()) / hidden + 1e-6
            A = torch.linalg.solve(Xc.T @ Xc + lam * torch.eye(hidden), Xc.T @ Yc)  # [H, H]
            _, _, Vh = torch.linalg.svd(Xc @ A, full_matrices=False)
            for r in ranks:
                out = torch.zeros(r, hidden)    # [r, H]; fewer directions than r (few tokens) leave zeros
                out[:min(r, len(Vh))] = Vh[:r]
                inn = (A @ out.T).T             # [r, H]: A_r = inn.T @ out
                A_r = inn.T @ out
                fitted[r][l][e] = (A_r, mu_y - mu_x @ A_r, inn, out)
    return fitted


def main():
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import train_predictor_probes as tp

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory (a Qwen3-MoE)")
    parser.add_argument("--out", required=True, help="the safetensors file to write")
    parser.add_argument("--rank", type=int, default=8, help="rank of each expert's surrogate (8: 17 KB an expert in RAM at hidden 256)")
    parser.add_argument("--tokens", type=int, default=16000, help="training-split tokens to fit on")
    parser.add_argument("--dtype", choices=["f32", "bf16"], default="bf16",
                        help="stored element type (bf16: half the file; MoEServe widens it to f32 on load)")
    parser.add_argument("--corpus", default=tp.DEFAULT_CORPUS, help="the demo model's training corpus (Python sources)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    cfg = model.config
    files = tp.corpus_files(args.corpus)
    train = [p for p in files if not tp.is_validation(os.path.relpath(p, args.corpus), 2.0)]
    xs, ys, seen = collect(model, tokenizer, train, args.tokens)
    print(f"fitting on {seen} training-split tokens", file=sys.stderr)
    fitted = fit(xs, ys, cfg.hidden_size, [args.rank])[args.rank]
    tensors = {}
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    # Contiguous: a stack of transposed views may keep their layout, and safetensors writes the raw buffer.
    def stacked(part, l):
        return torch.stack([f[part].contiguous() for f in fitted[l]]).to(dtype).contiguous()
    for l in range(cfg.num_hidden_layers):
        tensors[f"surrogate.{l}.in"] = stacked(2, l)
        tensors[f"surrogate.{l}.out"] = stacked(3, l)
        tensors[f"surrogate.{l}.bias"] = stacked(1, l)
    save_file(tensors, args.out, metadata={"rank": str(args.rank), "tokens": str(seen)})
    # Read back and check against the fit: a layout slip here silently gives a useless file.
    written = load_file(args.out)
    tolerance = 1e-4 if args.dtype == "f32" else 2e-2
    for l in range(cfg.num_hidden_layers):
        for e, (A, b, inn, out) in enumerate(fitted[l]):
            A_file = written[f"surrogate.{l}.in"][e].float().T @ written[f"surrogate.{l}.out"][e].float()
            scale = float(A.abs().max()) + 1e-6
            assert float((A_file - A).abs().max()) <= tolerance * scale and \
                float((written[f"surrogate.{l}.bias"][e].float() - b).abs().max()) <= tolerance * (float(b.abs().max()) + 1e-6), \
                f"layer {l} expert {e}: the written surrogate differs from the fit"
    print(f"wrote {args.out}: rank {args.rank}, {cfg.num_hidden_layers} layers x {cfg.num_experts} experts, {args.dtype}, "
          f"{sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20:.1f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
