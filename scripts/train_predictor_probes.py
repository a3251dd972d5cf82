#!/usr/bin/env python3
"""Fit cross-layer probes for `moe-serve --predictor-probes`: per pair of MoE layers (l, l+d), a
map from layer l's gate input (the normalised hidden state its router sees) to layer l+d,
fitted on hidden states recorded while the Hugging Face checkpoint reads the training split of the
demo model's corpus. Two kinds:

- `selection` (default): a small network (one hidden layer of --hidden-units SiLU units; 0 for
  plain logistic regression), one sigmoid output per expert, giving the probability that
  the expert is among layer l+d's top-k for this token. Calibrated for the decision prefetch
  makes (read an expert only if it is likely enough to be used); tensors `select.<t>.from.<s>.*`.
- `logits`: ridge least squares to layer l+d's router logits (a better cross-layer gate, still
  scored by softmax probability); tensors `probe.<t>.from.<s>.*`.

The cross-layer gate is the untrained map (the target router itself). On the held-out split the
script reports how often each agrees with the real top-k, and — what decides whether prefetch pays
— replays the held-out tokens through an LRU cache and scores the guesses that cost a read.

    /path/to/venv/bin/python scripts/train_predictor_probes.py --model /work/demo-model-hf-3 \\
        --out DemoModel/predictor-probes.safetensors [--kind selection] [--depths 1,2]

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


def record(model, tokenizer, paths, max_tokens, window, generate=0):
    """Per layer: gate inputs [N, H] and router logits [N, E] over up to max_tokens tokens, in
    reading order. With `generate` > 0 each file instead gives its first `window` tokens as a
    prompt, after which the model writes `generate` tokens itself (greedy and sampled at 0.7 in
    turn): a server decodes the model's own text, and the maps that guess the next token's
    first layers must learn the model's next token, not the corpus's."""
    layers = model.model.layers
    experts = model.config.num_experts
    inputs, logits = [[] for _ in layers], [[] for _ in layers]
    hooks = []
    for i, layer in enumerate(layers):
        hooks.append(layer.mlp.register_forward_pre_hook(
            lambda mod, args, i=i: inputs[i].append(args[0].reshape(-1, args[0].shape[-1]).detach())))
        hooks.append(layer.mlp.gate.register_forward_hook(
            lambda mod, args, out, i=i: logits[i].append((out[0] if isinstance(out, tuple) else out).reshape(-1, experts).detach())))
    seen = continued = 0
    with torch.no_grad():
        for path in paths:
            try:
                text = open(path, encoding="utf-8").read()
            except (UnicodeDecodeError, OSError):
                continue
            ids = tokenizer(text)["input_ids"][:window]
            if len(ids) < 16:
                continue
            if generate:
                sampled = continued % 2 == 1
                continued += 1
                out = model.generate(torch.tensor([ids]), max_new_tokens=generate, do_sample=sampled,
                                     temperature=0.7 if sampled else None, top_k=None, top_p=None,
                                     pad_token_id=tokenizer.eos_token_id)
                seen += out.shape[1] - 1  # the last token is sampled, never run
            else:
                model(torch.tensor([ids]))
                seen += len(ids)
            if seen >= max_tokens:
                break
    for hook in hooks:
        hook.remove()
    return [torch.cat(x).numpy() for x in inputs], [torch.cat(g).numpy() for g in logits], seen


def top_k(scores, k):
    return np.argpartition(-scores, k, axis=-1)[..., :k]


def agreement(predicted, true):
    """Mean share of the true top-k that the predicted top-k contains (recall = precision here)."""
    return float(np.mean([len(set(p) & set(t)) / len(t) for p, t in zip(predicted, true)]))


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def selected(logits, k):
    """[N, E] router logits -> [N, E] 0/1: which experts the router picks (top-k)."""
    chosen = np.zeros(logits.shape, dtype=np.float32)
    np.put_along_axis(chosen, top_k(logits, k), 1, axis=-1)
    return chosen


def fit_ridge(x, g, ridge):
    """Least squares x -> router logits g with an intercept: weight [E, H], bias [E]."""
    xa = np.hstack([x, np.ones((len(x), 1), dtype=np.float32)]).astype(np.float64)
    solution = np.linalg.solve(xa.T @ xa + ridge * np.eye(xa.shape[1]), xa.T @ g)  # [H+1, E]
    return solution[:-1].T.astype(np.float32), solution[-1].astype(np.float32)


def fit_selection_mlp(x, chosen, units, epochs, weight_decay, weights=None):
    """A hidden layer of `units` SiLU units, then one logit per expert, by AdamW on binary
    cross-entropy, each (token, expert) term weighted by `weights` [N, E] if given:
    (hidden weight [U, H], hidden bias [U], weight [E, U], bias [E])."""
    inputs, targets = torch.tensor(x), torch.tensor(chosen)
    term_weights = None if weights is None else torch.tensor(weights)
    model = torch.nn.Sequential(torch.nn.Linear(inputs.shape[1], units), torch.nn.SiLU(), torch.nn.Linear(units, targets.shape[1]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=weight_decay)
    for _ in range(epochs):
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), 1024):
            batch = order[start:start + 1024]
            optimizer.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(
                model(inputs[batch]), targets[batch],
                weight=None if term_weights is None else term_weights[batch]).backward()
            optimizer.step()
    hidden, out = model[0], model[2]
    return [t.detach().numpy().copy() for t in (hidden.weight, hidden.bias, out.weight, out.bias)]


def mlp_scores(x, hidden_weight, hidden_bias, weight, bias):
    h = x @ hidden_weight.T + hidden_bias
    return sigmoid((h * sigmoid(h)) @ weight.T + bias)


def fit_selection(x, chosen, weight_decay, iterations):
    """Logistic regression x -> P(expert selected), one output per expert: weight [E, H], bias [E]."""
    inputs, targets = torch.tensor(x), torch.tensor(chosen)
    linear = torch.nn.Linear(inputs.shape[1], targets.shape[1])
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(linear(inputs), targets) \
            + weight_decay * (linear.weight ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear.weight.detach().numpy().copy(), linear.bias.detach().numpy().copy()


def resident_masks(used, cache_experts):
    """[L, N, E] bool: whether each expert was resident in an LRU cache of `cache_experts` experts
    shared by all layers when its layer routed token i, the tokens read in order. `used`: [L, N, E]."""
    layer_count, tokens, _ = used.shape
    masks = np.zeros(used.shape, dtype=bool)
    cache, held = OrderedDict(), [set() for _ in range(layer_count)]
    for i in range(tokens):
        for layer in range(layer_count):
            if held[layer]:
                masks[layer, i, list(held[layer])] = True
            for e in np.flatnonzero(used[layer, i]):
                key = (layer, int(e))
                cache[key] = True
                cache.move_to_end(key)
                held[layer].add(int(e))
                if len(cache) > cache_experts:
                    (old_layer, old_expert), _ = cache.popitem(last=False)
                    held[old_layer].discard(old_expert)
    return masks


def replay_reads(probabilities, used, cache_experts, width):
    """Replays held-out tokens in order through an LRU cache of `cache_experts` experts. For each
    token and each target layer t in `probabilities`, the guesses are those of the top `width`
    experts of `probabilities[t]` that reach the floor and are not resident when layer t routes.
    Returns, per floor, (guessed reads per token, share of them used, share of all layers' misses
    they cover). `probabilities`: {t: [N, E]}; `used`: [L, N, E] 0/1."""
    layer_count, tokens, _ = used.shape
    order = {t: np.argsort(-p, axis=1)[:, :width] for t, p in probabilities.items()}
    truth = [[set(np.flatnonzero(used[l, i])) for i in range(tokens)] for l in range(layer_count)]
    results = {}
    for threshold in THRESHOLDS:
        cache, reads, hits, misses, covered = OrderedDict(), 0, 0, 0, 0
        for i in range(tokens):
            for layer in range(layer_count):
                guesses = set()
                if layer in probabilities:
                    for e in order[layer][i]:
                        if probabilities[layer][i, e] < threshold or probabilities[layer][i, e] == 0:
                            break
                        if (layer, int(e)) not in cache:
                            guesses.add(int(e))
                    reads += len(guesses)
                    hits += len(guesses & truth[layer][i])
                missed = [e for e in truth[layer][i] if (layer, e) not in cache]
                misses += len(missed)
                covered += sum(e in guesses for e in missed)
                for e in truth[layer][i]:
                    cache[(layer, e)] = True
                    cache.move_to_end((layer, e))
                    if len(cache) > cache_experts:
                        cache.popitem(last=False)
        results[threshold] = (reads / tokens, hits / max(reads, 1), covered / max(misses, 1))
    return results


THRESHOLDS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.8, 0.9)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--out", required=True, help="safetensors file to write")
    parser.add_argument("--kind", choices=["selection", "logits"], default="selection")
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--val-percent", type=float, default=2.0)
    parser.add_argument("--depths", default="1,2")
    parser.add_argument("--train-tokens", type=int, default=60_000)
    parser.add_argument("--eval-tokens", type=int, default=15_000)
    parser.add_argument("--generated-tokens", type=int, default=30_000,
                        help="also train on about this many tokens the model writes itself (0: corpus text only)")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="prompt length for those continuations")
    parser.add_argument("--continuation", type=int, default=96, help="tokens the model writes per prompt")
    parser.add_argument("--window", type=int, default=256, help="tokens read from the start of each file")
    parser.add_argument("--ridge", type=float, default=1e-2, help="L2 penalty of the logits fit")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="L2 penalty of the selection fit")
    parser.add_argument("--hidden-units", type=int, default=128,
                        help="SiLU units of a hidden layer in selection probes (0: logistic regression, no hidden layer)")
    parser.add_argument("--epochs", type=int, default=15, help="AdamW epochs of a selection probe with a hidden layer")
    parser.add_argument("--iterations", type=int, default=300, help="L-BFGS iterations of the selection fit")
    parser.add_argument("--no-wrap", dest="wrap", action="store_false",
                        help="do not fit maps from the last layers to the next token's first layers")
    parser.add_argument("--cache-experts", type=int, default=98, help="LRU cache size for the read replay")
    parser.add_argument("--resident-weight", type=float, default=1.0,
                        help="weight of the loss terms of experts an LRU cache of --cache-experts holds when their "
                             "layer routes (1: every term alike). Below 1 the probes are fitted mostly on the guesses "
                             "that cost a read; selection probes with a hidden layer only")
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
    if args.generated_tokens:
        # Files past those read above, so that no text is both read and continued.
        later = train[len(train) // 2:]
        x_gen, g_gen, n_gen = record(model, tokenizer, later, args.generated_tokens, args.prompt_tokens, generate=args.continuation)
        x_train = [np.vstack([a, b]) for a, b in zip(x_train, x_gen)]
        g_train = [np.vstack([a, b]) for a, b in zip(g_train, g_gen)]
        n_train += n_gen
        print(f"recorded {n_gen} tokens of the model's own continuations", file=sys.stderr)
    x_eval, g_eval, n_eval = record(model, tokenizer, held_out, args.eval_tokens, args.window)
    print(f"recorded {n_train} training and {n_eval} held-out tokens in {time.time() - start:.0f} s", file=sys.stderr)
    routers = [layer.mlp.gate.weight.detach().numpy() for layer in model.model.layers]  # [E, H]
    used_eval = np.stack([selected(g, k) for g in g_eval])  # [L, N, E]
    term_weights = None
    if args.resident_weight != 1.0:
        # The training stream's residency: a guess for an expert already held costs nothing,
        # so its terms count less and the probe's capacity goes to the experts that are read.
        held = resident_masks(np.stack([selected(g, k) for g in g_train]), args.cache_experts)
        term_weights = np.where(held, np.float32(args.resident_weight), np.float32(1.0)).astype(np.float32)
        print(f"resident share of the training terms: {held.mean():.3f}, weighted {args.resident_weight:g}", file=sys.stderr)
    prefix = "select" if args.kind == "selection" else "probe"
    tensors = {}
    for depth in map(int, args.depths.split(",")):
        start = time.time()
        gate_scores, fitted_scores = {}, {}
        print(f"\n{depth} layer(s) ahead, held-out tokens: {n_eval}")
        print(f"| target ← source | cross-layer gate: top-{k} agreement | fitted {args.kind} probe |")
        print("|---|---|---|")
        for source in range(len(routers)):
            target = (source + depth) % len(routers)
            # A target at or before its source is the next token's layer (the gate wraps round
            # to the next decode step): pair each token's hidden state with the next token's
            # routing. Only a fitted map can do this; the target's router cannot.
            wraps = target <= source
            if wraps and not args.wrap:
                continue
            x_fit, g_fit = (x_train[source][:-1], g_train[target][1:]) if wraps else (x_train[source], g_train[target])
            if args.kind == "selection" and args.hidden_units:
                w_fit = None if term_weights is None else (term_weights[target][1:] if wraps else term_weights[target])
                hidden_weight, hidden_bias, weight, bias = fit_selection_mlp(x_fit, selected(g_fit, k), args.hidden_units, args.epochs,
                                                                             args.weight_decay, w_fit)
                scores = mlp_scores(x_eval[source], hidden_weight, hidden_bias, weight, bias)
                tensors[f"{prefix}.{target}.from.{source}.hidden.weight"] = np.ascontiguousarray(hidden_weight)
                tensors[f"{prefix}.{target}.from.{source}.hidden.bias"] = hidden_bias
            elif args.kind == "selection":
                weight, bias = fit_selection(x_fit, selected(g_fit, k), args.weight_decay, args.iterations)
                scores = sigmoid(x_eval[source] @ weight.T + bias)
            else:
                weight, bias = fit_ridge(x_fit, g_fit, args.ridge)
                scores = softmax(x_eval[source] @ weight.T + bias)
            if wraps:
                # Scores for token i come from token i - 1; the first token has no guess.
                scores = np.vstack([np.zeros((1, scores.shape[1]), dtype=scores.dtype), scores[:-1]])
            fitted_scores[target] = scores
            true = top_k(g_eval[target], k)
            fitted = agreement(top_k(scores, k)[1:], true[1:])
            if wraps:
                print(f"| {target} (next token) ← {source} | — | {fitted:.3f} |")
            else:
                gate_scores[target] = softmax(x_eval[source] @ routers[target].T)
                gate = agreement(top_k(gate_scores[target], k), true)
                print(f"| {target} ← {source} | {gate:.3f} | {fitted:.3f} |")
            tensors[f"{prefix}.{target}.from.{source}.weight"] = np.ascontiguousarray(weight)
            tensors[f"{prefix}.{target}.from.{source}.bias"] = bias
        print(f"(fitted in {time.time() - start:.0f} s)", file=sys.stderr)
        # What decides whether prefetch pays: the guesses that cost a read (not resident when
        # their layer routes), through an LRU cache of --cache-experts experts, at each probability
        # floor (router softmax probability for the gate and logits probes, selection probability
        # for selection probes); each guess is one of the top k+1.
        print(f"\nguesses that cost a read, {depth} layer(s) ahead, LRU cache of {args.cache_experts} experts "
              f"(per floor: reads per token / share used / share of misses covered):")
        print("| scorer | " + " | ".join(f"floor {t:g}" for t in THRESHOLDS) + " |")
        print("|---|" + "---|" * len(THRESHOLDS))
        for name, scores in (("cross-layer gate", gate_scores), (f"fitted {args.kind} probe", fitted_scores)):
            results = replay_reads(scores, used_eval, args.cache_experts, k + 1)
            print(f"| {name} | " + " | ".join(f"{r:.2f} / {p:.2f} / {c:.2f}" for r, p, c in results.values()) + " |")
    save_file(tensors, args.out, metadata={"source": args.model, "kind": args.kind, "train_tokens": str(n_train),
                                          "resident_weight": f"{args.resident_weight:g}", "cache_experts": str(args.cache_experts),
                                          "hidden_units": str(args.hidden_units if args.kind == "selection" else 0)})
    print(f"wrote {sum(name.endswith('.bias') and '.hidden.' not in name for name in tensors)} {args.kind} probes to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
