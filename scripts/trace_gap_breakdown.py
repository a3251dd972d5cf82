#!/usr/bin/env python3
"""Where LRU loses to Belady on a routing trace (standard library only): the misses of each
policy and each part's share of the LRU→Belady gap, split by phase (prefill / decode), by
whether the token is among its sequence's first 16, and by whether it belongs to the trace's
first sequence (a cold cache) or a later one. Replay semantics are scripts/replay_trace.py's
(per-layer pools of C experts, a token's experts resident together).

    scripts/trace_gap_breakdown.py TRACE.jsonl --cache-per-layer 16

A gap that sits in the first tokens of each new sequence is one no online policy can close
without knowing what the next prompt will route to; a gap spread over decode tokens is where a
better estimate of each expert's next use pays (docs/expert-cache.md, "A policy that knows the
sequences").
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replay_trace import next_uses  # noqa: E402


def read(path):
    """[(layer, distinct experts, seq, pos, phase)] in replay order, and the layer slots."""
    groups, layer_count = [], 0
    first_seq = None
    with open(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            token = json.loads(line)
            if first_seq is None:
                first_seq = token.get("seq", 0)
            layer_count = max(layer_count, len(token["layers"]))
            for layer, experts in enumerate(token["layers"]):
                if experts is None:
                    continue
                distinct = []
                for expert in experts:
                    if expert not in distinct:
                        distinct.append(expert)
                groups.append((layer, distinct, token.get("seq", 0) == first_seq, token.get("pos", 0), token.get("phase", "unknown")))
    return groups, layer_count


def hits(groups, layer_count, capacity, belady):
    """Per request in replay order: 1 for a hit, 0 for a miss."""
    future = next_uses([(layer, experts) for layer, experts, *_ in groups]) if belady else None
    caches = [dict() for _ in range(layer_count)]
    out, clock, cursor = [], 0, 0
    for layer, experts, *_ in groups:
        cache, misses = caches[layer], []
        for expert in experts:
            value = future[cursor] if future else None
            cursor += 1
            if expert in cache:
                clock += 1
                cache[expert] = value if future else clock
                out.append(1)
            else:
                misses.append((expert, value))
                out.append(0)
        for expert, value in misses:
            if len(cache) >= capacity:
                candidates = [e for e in cache if e not in experts]
                key = (lambda e: (-cache[e], e)) if future else (lambda e: (cache[e], e))
                del cache[min(candidates, key=key)]
            clock += 1
            cache[expert] = value if future else clock
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--cache-per-layer", type=int, required=True)
    args = parser.parse_args()
    groups, layer_count = read(args.trace)
    lru = hits(groups, layer_count, args.cache_per_layer, belady=False)
    belady = hits(groups, layer_count, args.cache_per_layer, belady=True)
    parts = {}
    index = 0
    for layer, experts, first, pos, phase in groups:
        name = ("first sequence" if first else "later sequences") + ", " + phase + (", tokens 0-15" if pos < 16 else ", tokens 16+")
        for _ in experts:
            part = parts.setdefault(name, [0, 0, 0])
            part[0] += 1
            part[1] += 1 - lru[index]
            part[2] += 1 - belady[index]
            index += 1
    gap = sum(belady) - sum(lru)
    print(f"{args.trace}: {len(lru)} requests, {args.cache_per_layer} experts cached per layer; "
          f"LRU {sum(lru) / len(lru):.4f}, Belady {sum(belady) / len(belady):.4f}")
    print("| part | requests | LRU misses | Belady misses | share of the gap |")
    print("|---|---|---|---|---|")
    for name in sorted(parts):
        requests, lru_misses, belady_misses = parts[name]
        share = 100 * (lru_misses - belady_misses) / gap if gap else 0
        print(f"| {name} | {requests} | {lru_misses} | {belady_misses} | {share:.0f}% |")


if __name__ == "__main__":
    main()
