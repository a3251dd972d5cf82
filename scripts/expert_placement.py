#!/usr/bin/env python3
"""Expert parallelism on paper: how many machines one token touches per layer when each layer's
experts are split over M machines, at random or grouped by co-activation (docs/SCALING.md).

Reads routing traces (`moe-serve generate --record-trace FILE`, one JSON line per token with each
layer's top-k experts). Fits the placement on the even-numbered trace files and evaluates it on the
odd ones (held out). Co-activation placement, per layer: the machine with the least load so far
takes the unplaced expert most often routed together with its group (balanced greedy; E/M experts
each). Random placement: the mean of 50 random balanced splits. Also reports
the busiest machine's share of the expert activations (1/M is perfect balance).

  python3 scripts/expert_placement.py --machines 2,4 trace1.jsonl trace2.jsonl ...
"""

import argparse
import json
import random
import sys
from collections import Counter, defaultdict


def load(paths):
    tokens = []
    for path in paths:
        for line in open(path):
            if line.strip():
                tokens.append(json.loads(line)["layers"])
    return tokens


def coactivation_placement(tokens, layer, experts, machines):
    """Balanced greedy: the machine with the least activation load so far (and room left) takes the
    unplaced expert most often routed together with the experts it holds (its first: the most used
    one left). Taking turns by load keeps the machines' shares of the work near 1/M."""
    use, pair = Counter(), defaultdict(Counter)
    for t in tokens:
        chosen = t[layer]
        use.update(chosen)
        for a in chosen:
            for b in chosen:
                if a != b:
                    pair[a][b] += 1
    per_machine = experts // machines
    unplaced = set(range(experts))
    groups = [[] for _ in range(machines)]
    load = [0] * machines
    while unplaced:
        open_machines = [m for m in range(machines) if len(groups[m]) < per_machine] or list(range(machines))
        m = min(open_machines, key=lambda m: (load[m], m))
        group = groups[m]
        best = max(unplaced, key=lambda e: (sum(pair[g][e] for g in group), use[e], -e))
        group.append(best)
        load[m] += use[best]
        unplaced.discard(best)
    return {e: m for m, group in enumerate(groups) for e in group}


def evaluate(tokens, placements, machines):
    touched, load = 0, Counter()
    count = 0
    for t in tokens:
        for layer, chosen in enumerate(t):
            if layer not in placements:
                continue
            ms = [placements[layer][e] for e in chosen]
            touched += len(set(ms))
            load.update(ms)
            count += 1
    return touched / count, max(load.values()) / sum(load.values())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("traces", nargs="+")
    parser.add_argument("--machines", default="2,4")
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--families", type=int, default=2,
                        help="the trace files are this many equal groups (prompt families), in order")
    args = parser.parse_args()
    fit, held = load(args.traces[0::2]), load(args.traces[1::2])
    # How alike the families route: per layer, the overlap sum(min(p, q)) of their expert-usage
    # distributions (1: the same experts equally often; 0: disjoint), averaged over layers.
    group = len(args.traces) // args.families
    usage = []
    for f in range(args.families):
        tokens = load(args.traces[f * group:(f + 1) * group])
        usage.append([Counter(e for t in tokens for e in t[layer]) for layer in range(len(tokens[0]))])
    if args.families == 2:
        overlaps = []
        for a, b in zip(usage[0], usage[1]):
            ta, tb = sum(a.values()), sum(b.values())
            overlaps.append(sum(min(a[e] / ta, b[e] / tb) for e in range(args.experts)))
        print(f"routing overlap of the two families: {sum(overlaps) / len(overlaps):.2f} "
              f"(per layer {[round(o, 2) for o in overlaps]})", file=sys.stderr)
    layers = len(fit[0])
    print(f"{len(fit)} tokens to fit, {len(held)} held out, {layers} layers, {args.experts} experts, "
          f"top-{len(fit[0][0])}", file=sys.stderr)
    out = {}
    for machines in [int(m) for m in args.machines.split(",")]:
        co = {layer: coactivation_placement(fit, layer, args.experts, machines) for layer in range(layers)}
        co_touched, co_max = evaluate(held, co, machines)
        rng = random.Random(1)
        rand = []
        for _ in range(50):
            placements = {}
            for layer in range(layers):
                order = list(range(args.experts))
                rng.shuffle(order)
                placements[layer] = {e: i * machines // args.experts for i, e in enumerate(order)}
            rand.append(evaluate(held, placements, machines))
        r_touched = sum(x[0] for x in rand) / len(rand)
        r_max = sum(x[1] for x in rand) / len(rand)
        out[machines] = {"random_machines_per_token_layer": r_touched, "coactivation_machines_per_token_layer": co_touched,
                         "random_busiest_share": r_max, "coactivation_busiest_share": co_max}
        print(f"M={machines}: machines touched per token and layer: random {r_touched:.2f}, co-activation "
              f"{co_touched:.2f}; busiest machine's share of activations: random {r_max:.2f}, co-activation {co_max:.2f}",
              file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
