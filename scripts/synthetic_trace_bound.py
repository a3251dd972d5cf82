#!/usr/bin/env python3
"""How much of the LRU→Belady gap a cache policy could close on scripts/synthetic_trace.py's trace
if it knew the generator's probabilities (standard library only).

The trace's routing is drawn from known weights: a Zipf popularity per layer, three experts of each
sequence's "topic" weighted ×4, and a chance that a decode token repeats the previous token's
experts. This runs the same generator (same options and seed, so the same trace) and replays each
layer's pool with LRU and Belady's optimum (scripts/replay_trace.py, the semantics `bench trace`
is cross-checked against) and with two informed policies that evict the resident expert least
likely to be drawn: `knows_popularity` (the Zipf weights only) and `knows_topic` (the current
sequence's weights as well). The current token's experts are never evicted (the repeat chance only
favours them), so the second is the greedy policy with the generator's full knowledge: roughly the
most an online policy can close on this trace, against which `bench trace`'s `gap_closed` reads.

    scripts/synthetic_trace_bound.py --layers 8 --experts 32 --top-k 4 --sequences 6 --seed 1 --caches 8,12,16
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replay_trace import replay as replay_reference  # noqa: E402
from synthetic_trace import Generator, add_generator_arguments  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_generator_arguments(parser)
    parser.add_argument("--caches", default="8,12,16", help="experts cached per layer")
    args = parser.parse_args()
    generator = Generator(args)
    tokens = list(generator.tokens())
    groups = [(layer, experts) for token, _ in tokens for layer, experts in enumerate(token["layers"]) if experts is not None]
    print("| experts cached per layer | lru | belady | knows_popularity | knows_topic | gap closed: popularity | gap closed: topic |")
    print("|---|---|---|---|---|---|---|")
    for cache in map(int, args.caches.split(",")):
        lru = replay_reference(groups, args.layers, cache, "lru")["hit_rate"]
        belady = replay_reference(groups, args.layers, cache, "belady")["hit_rate"]
        informed = {policy: informed_replay(tokens, generator, cache, policy == "knows_topic")
                    for policy in ("knows_popularity", "knows_topic")}
        closed = {policy: 100 * (rate - lru) / (belady - lru) for policy, rate in informed.items()}
        print(f"| {cache} | {lru:.4f} | {belady:.4f} | {informed['knows_popularity']:.4f} | {informed['knows_topic']:.4f} | "
              f"{closed['knows_popularity']:.0f}% | {closed['knows_topic']:.0f}% |")


def informed_replay(tokens, generator, cache_size, knows_topic):
    """Hit rate of per-layer pools that evict the resident expert with the lowest drawing
    weight (never one of the current token's experts), as replay_trace.py counts hits."""
    caches = {}
    hits = requests = 0
    for token, topic in tokens:
        for layer, experts in enumerate(token["layers"]):
            if experts is None:
                continue
            cache = caches.setdefault(layer, set())
            weights = generator.weights(layer, topic if knows_topic else None)
            misses = []
            for expert in experts:
                requests += 1
                if expert in cache:
                    hits += 1
                else:
                    misses.append(expert)
            for expert in misses:
                if len(cache) >= cache_size:
                    cache.remove(min((e for e in cache if e not in experts), key=lambda e: (weights[e], e)))
                cache.add(expert)
    return hits / requests


if __name__ == "__main__":
    main()
