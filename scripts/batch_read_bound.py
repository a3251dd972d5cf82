#!/usr/bin/env python3
"""How many expert reads per generated token can batching save? An offline bound, policy-free.

Records one routing trace per sequence with `moe-serve generate --record-trace` (real prompts,
sampled), then replays their decode tokens two ways through one shared cache of C experts:

  1 sequence : the sequences one after another, a token at a time (what one user costs);
  N sequences: step t requests the union of the N sequences' token-t experts, layer by layer
               (what the engine's expert-grouped step loads: each distinct expert once).

Each replay uses Belady's optimal eviction (the resident expert, not in the current request,
whose next request is farthest away), which no online policy can beat, and LRU for reference.
Reads per generated token = misses / tokens. If even Belady reads more per token at N than at 1,
no cache policy can make bytes per token fall with concurrency at that cache size.

    scripts/batch_read_bound.py [--model DIR] [--sequences 8] [--max-tokens 128] [--caches 48,64,98,128,147,192]

Standard library only; needs .build/release/moe-serve (swift build -c release). Prints a
Markdown table; --json prints the numbers instead.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import OrderedDict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record_traces(binary, model, prompts, sequences, max_tokens, temperature, directory):
    """One decode trace per sequence: [[per layer: experts or None] per token]."""
    traces = []
    for s in range(sequences):
        path = os.path.join(directory, f"seq{s}.jsonl")
        command = [binary, "generate", "--prompt", prompts[s % len(prompts)], "--max-tokens", str(max_tokens),
                   "--ignore-eos", "--temperature", str(temperature), "--seed", str(s + 1), "--record-trace", path]
        if model:
            command += ["--model", model]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(path) as handle:
            tokens = [json.loads(line) for line in handle if line.strip()]
        traces.append([t["layers"] for t in tokens if t.get("phase") == "decode"])
        print(f"recorded sequence {s + 1}/{sequences}: {len(traces[-1])} decode tokens", file=sys.stderr)
    return traces


def requests(token_layers):
    """The (layer, expert) request groups of one step, repeats dropped, in layer order."""
    groups = []
    for layer, experts in enumerate(token_layers):
        if experts is not None:
            groups.append([(layer, e) for e in dict.fromkeys(experts)])
    return groups


def belady_misses(groups, capacity):
    flat = [key for group in groups for key in group]
    next_use, last = [0] * len(flat), {}
    for i in range(len(flat) - 1, -1, -1):
        next_use[i] = last.get(flat[i], float("inf"))
        last[flat[i]] = i
    resident, misses, i = {}, 0, 0
    for group in groups:
        pinned = set(group)
        for key in group:
            if key not in resident:
                misses += 1
                if len(resident) >= capacity:
                    victim = max((k for k in resident if k not in pinned), key=lambda k: resident[k])
                    del resident[victim]
            resident[key] = next_use[i]
            i += 1
    return misses


def lru_misses(groups, capacity):
    resident, misses = OrderedDict(), 0
    for group in groups:
        pinned = set(group)
        for key in group:
            if key in resident:
                resident.move_to_end(key)
                continue
            misses += 1
            if len(resident) >= capacity:
                del resident[next(k for k in resident if k not in pinned)]
            resident[key] = True
    return misses


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory or store (default: the bundled demo)")
    parser.add_argument("--prompts", default=os.path.join(ROOT, "scripts/prompts/python.jsonl"))
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--caches", default="48,64,98,128,147,192", help="cache sizes in experts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    binary = os.path.join(ROOT, ".build/release/moe-serve")
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary} not found: run swift build -c release first")
    with open(args.prompts) as handle:
        prompts = [json.loads(line) for line in handle if line.strip()]
    with tempfile.TemporaryDirectory() as directory:
        traces = record_traces(binary, args.model, prompts, args.sequences, args.max_tokens, args.temperature, directory)
    steps = min(len(t) for t in traces)
    tokens = steps * len(traces)
    alone = [g for trace in traces for token in trace[:steps] for g in requests(token)]
    batched = []
    for t in range(steps):
        union = [sum((trace[t][layer] or [] for trace in traces), []) if traces[0][t][layer] is not None else None
                 for layer in range(len(traces[0][t]))]
        batched += requests(union)
    distinct = sum(len(g) for g in batched) / len([g for g in batched])
    rows = []
    for capacity in map(int, args.caches.split(",")):
        rows.append({"cache_experts": capacity,
                     "belady_reads_per_token": [belady_misses(alone, capacity) / tokens, belady_misses(batched, capacity) / tokens],
                     "lru_reads_per_token": [lru_misses(alone, capacity) / tokens, lru_misses(batched, capacity) / tokens]})
    no_cache = [sum(len(g) for g in alone) / tokens, sum(len(g) for g in batched) / tokens]
    if args.json:
        print(json.dumps({"sequences": len(traces), "decode_tokens": tokens, "distinct_experts_per_layer_step": distinct,
                          "no_cache_reads_per_token": no_cache, "caches": rows}, indent=1))
        return
    print(f"{tokens} decode tokens ({len(traces)} sequences x {steps}); a batched step touches {distinct:.1f} distinct experts per layer")
    print()
    print(f"| cache (experts) | Belady reads / token, 1 -> {len(traces)} seqs | {len(traces)} seqs read | LRU reads / token, 1 -> {len(traces)} |")
    print("|---|---|---|---|")
    print(f"| none | {no_cache[0]:.2f} -> {no_cache[1]:.2f} | {no_cache[1] / no_cache[0]:.2f}x | same |")
    for row in rows:
        b, l = row["belady_reads_per_token"], row["lru_reads_per_token"]
        print(f"| {row['cache_experts']} | {b[0]:.2f} -> {b[1]:.2f} | {b[1] / b[0]:.2f}x | {l[0]:.2f} -> {l[1]:.2f} |")


if __name__ == "__main__":
    main()
