#!/usr/bin/env python3
"""Fit cross-layer probes for `moe-serve --predictor-probes`: per pair of MoE layers (l, l+d),
a linear map from layer l's gate input (the normalised hidden state its router sees) to layer
l+d's router logits, by ridge-regularised least squares on hidden states recorded while the
Hugging Face checkpoint reads the training split of the demo model's corpus. The cross-layer gate
is the same map left untrained (the target router itself); the script reports, on the held-out
split, how often each agrees with the real top-k.

    /path/to/venv/bin/python scripts/train_predictor_probes.py --model /work/demo-model-hf-3 \\
        --out DemoModel/predictor-probes.safetensors [--depths 1,2] [--train-tokens 60000]

Needs torch, transformers, safetensors and numpy (the venv of scripts/make_reference_models.py).
The corpus and its deterministic train/held-out split are train_demo_model.py's.
"""
import argparse
import hashlib
import os
import random
import sys
import time
from collections import OrderedDict

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

DEFAULT_CORPUS = "/root/.pyenv/versions/3.11.7/lib/python3.11"
EXCLUDED_DIRS = {"site-packages", "__pycache__", "pydoc_data"}


def is_validation(rel, val_percent):
    """train_demo_model.py's hold-out rule: sha256 of the relative path."""
    h = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big")
    return (h % 10_000) < val_percent * 100


def corpus_files(root):
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        files += [os.path.join(dirpath, name) for name in filenames if name.endswith(".py")]
    files.sort()
    random.Random(0).shuffle(files)
    return files


def record(model, tokenizer, paths, max_tokens, window):
    """Per layer: gate inputs [N, H] and router logits [N, E] over up to max_tokens tokens."""
    layers = model.model.layers
    experts = model.config.num_experts
    inputs, logits = [[] for _ in layers], [[] for _ in layers]
    hooks = []
    for i, layer in enumerate(layers):
        hooks.append(layer.mlp.register_forward_pre_hook(
            lambda mod, args, i=i: inputs[i].append(args[0].reshape(-1, args[0].shape[-1]).detach())))
        hooks.append(layer.mlp.gate.register_forward_hook(
            lambda mod, args, out, i=i: logits[i].append((out[0] if isinstance(out, tuple) else out).reshape(-1, experts).detach())))
    seen = 0
    with torch.no_grad():
        for path in paths:
            try:
                text = open(path, encoding="utf-8").read()
            except (UnicodeDecodeError, OSError):
                continue
            ids = tokenizer(text)["input_ids"][:window]
            if len(ids) < 16:
                continue
            model(torch.tensor([ids]))
            seen += len(ids)
            if seen >= max_tokens:
                break
    for hook in hooks:
        hook.remove()
    return [torch.cat(x).numpy() for x in inputs], [torch.cat(g).numpy() for g in logits], seen


def top_k(scores, k):
    return np.argpartition(-scores, k, axis=1)[:, :k]


def agreement(predicted, true):
    """Mean share of the true top-k that the predicted top-k contains (recall = precision here)."""
    return float(np.mean([len(set(p) & set(t)) / len(t) for p, t in zip(predicted, true)]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--out", required=True, help="safetensors file to write")
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--val-percent", type=float, default=2.0)
    parser.add_argument("--depths", default="1,2")
    parser.add_argument("--train-tokens", type=int, default=60_000)
    parser.add_argument("--eval-tokens", type=int, default=15_000)
    parser.add_argument("--window", type=int, default=256, help="tokens read from the start of each file")
    parser.add_argument("--ridge", type=float, default=1e-2)
    parser.add_argument("--cache-experts", type=int, default=98, help="LRU cache size for the read-precision replay")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    k = model.config.num_experts_per_tok
    files = corpus_files(args.corpus)
    rel = lambda p: os.path.relpath(p, args.corpus)
    train = [p for p in files if not is_validation(rel(p), args.val_percent)]
    held_out = [p for p in files if is_validation(rel(p), args.val_percent)]
    start = time.time()
    x_train, g_train, n_train = record(model, tokenizer, train, args.train_tokens, args.window)
    x_eval, g_eval, n_eval = record(model, tokenizer, held_out, args.eval_tokens, args.window)
    print(f"recorded {n_train} training and {n_eval} held-out tokens in {time.time() - start:.0f} s", file=sys.stderr)
    routers = [layer.mlp.gate.weight.detach().numpy() for layer in model.model.layers]  # [E, H]
    tensors = {}
    print(f"| target layer | source layer | cross-layer gate: top-{k} agreement | fitted probe | (held-out tokens: {n_eval}) |")
    print("|---|---|---|---|---|")
    for depth in map(int, args.depths.split(",")):
        for source in range(len(routers) - depth):
            target = source + depth
            xa = np.hstack([x_train[source], np.ones((len(x_train[source]), 1), dtype=np.float32)]).astype(np.float64)
            solution = np.linalg.solve(xa.T @ xa + args.ridge * np.eye(xa.shape[1]), xa.T @ g_train[target])  # [H+1, E]
            weight, bias = solution[:-1].T.astype(np.float32), solution[-1].astype(np.float32)
            true = top_k(g_eval[target], k)
            gate = agreement(top_k(x_eval[source] @ routers[target].T, k), true)
            fitted = agreement(top_k(x_eval[source] @ weight.T + bias, k), true)
            print(f"| {target} | {source} | {gate:.3f} | {fitted:.3f} | |")
            tensors[f"probe.{target}.from.{source}.weight"] = np.ascontiguousarray(weight)
            tensors[f"probe.{target}.from.{source}.bias"] = bias
    # What decides whether prefetch pays is the precision of the guesses that cost a read: replay the
    # held-out tokens in order through an LRU cache of --cache-experts experts and score, per scorer,
    # the one-layer-ahead guesses that were not resident when made.
    print()
    print(f"one layer ahead, held-out tokens through an LRU cache of {args.cache_experts} experts:")
    print("| scorer | guesses that cost a read, per token | of which used |")
    print("|---|---|---|")
    layer_count = len(routers)
    for name in ("cross-layer gate", "fitted probe"):
        cache, reads, used = OrderedDict(), 0, 0
        for t in range(len(x_eval[0])):
            for layer in range(layer_count):
                for e in top_k(g_eval[layer][t:t + 1], k)[0]:
                    key = (layer, int(e))
                    cache[key] = True
                    cache.move_to_end(key)
                    if len(cache) > args.cache_experts:
                        cache.popitem(last=False)
                if layer + 1 < layer_count and f"probe.{layer + 1}.from.{layer}.weight" in tensors:
                    x = x_eval[layer][t]
                    if name == "fitted probe":
                        scores = tensors[f"probe.{layer + 1}.from.{layer}.weight"] @ x + tensors[f"probe.{layer + 1}.from.{layer}.bias"]
                    else:
                        scores = routers[layer + 1] @ x
                    truth = set(int(e) for e in top_k(g_eval[layer + 1][t:t + 1], k)[0])
                    for e in np.argsort(-scores)[:k]:
                        if (layer + 1, int(e)) not in cache:
                            reads += 1
                            used += int(e) in truth
        print(f"| {name} | {reads / len(x_eval[0]):.2f} | {used / max(reads, 1):.3f} |")
    save_file(tensors, args.out, metadata={"source": args.model, "train_tokens": str(n_train), "ridge": str(args.ridge)})
    print(f"wrote {len(tensors) // 2} probes to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
