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
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replay_trace import read_requests, replay  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--cache-per-layer", type=int, required=True)
    args = parser.parse_args()
    records = []
    groups, layer_count = read_requests(args.trace, tokens=records)
    lru, belady = [], []
    replay(groups, layer_count, args.cache_per_layer, "lru", outcomes=lru)
    replay(groups, layer_count, args.cache_per_layer, "belady", outcomes=belady)
    first_seq = records[0].get("seq", 0) if records else 0
    parts = {}
    index = 0
    for (layer, experts), record in zip(groups, records):
        first, pos, phase = record.get("seq", 0) == first_seq, record.get("pos", 0), record.get("phase", "unknown")
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
