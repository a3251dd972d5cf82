#!/usr/bin/env python3
"""How much of the LRU→Belady gap a cache policy could close on scripts/synthetic_trace.py's trace
if it knew the generator's probabilities (standard library only).

The trace's routing is drawn from known weights: a Zipf popularity per layer, three experts of each
sequence's "topic" weighted ×4, and a chance that a decode token repeats the previous token's
experts. Rebuilding those weights from the same seed, this replays each layer's pool with LRU,
Belady's optimum and two informed policies that evict the resident expert least likely to be drawn:
`knows_popularity` (the Zipf weights only) and `knows_topic` (the current sequence's weights as
well). The current token's experts are never evicted (the repeat chance only favours them), so the
second is the greedy policy with the generator's full knowledge: roughly the most an online policy
can close on this trace, against which `bench trace`'s `gap_closed` can be read.

    scripts/synthetic_trace.py --layers 8 --experts 32 --top-k 4 --sequences 6 --seed 1 > trace.jsonl
    scripts/synthetic_trace_bound.py trace.jsonl --seed 1 --caches 8,12,16

Keep --layers/--experts/--top-k/--sequences/--seed and the generator's defaults equal to the ones
the trace was written with: the weights are rebuilt by replaying the generator's random draws.
"""
import argparse
import json
import random


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--sequences", type=int, default=6)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--caches", default="8,12,16", help="experts cached per layer")
    args = parser.parse_args()

    # The generator's first draws: each layer's popularity order, then per sequence its topic
    # (the routing draws between topics are replayed from the trace's own count of them).
    rng = random.Random(args.seed)
    popularity = [1.0 / (rank + 1) ** args.zipf for rank in range(args.experts)]
    orders = [rng.sample(range(args.experts), args.experts) for _ in range(args.layers)]
    trace = [json.loads(line) for line in open(args.trace)]
    topics = rebuild_topics(args, rng, trace, popularity, orders)

    def weights(layer, seq, topic):
        w = [0.0] * args.experts
        for rank, expert in enumerate(orders[layer]):
            w[expert] = popularity[rank]
        if topic:
            for expert in topics[seq][layer]:
                w[expert] *= 4.0
        return w

    layers = [l for l in range(len(trace[0]["layers"])) if trace[0]["layers"][l] is not None]
    print("| experts cached per layer | lru | belady | knows_popularity | knows_topic | gap closed: popularity | gap closed: topic |")
    print("|---|---|---|---|---|---|---|")
    for cache in map(int, args.caches.split(",")):
        rates = {}
        for policy in ("lru", "belady", "knows_popularity", "knows_topic"):
            hits = total = 0
            for layer in layers:
                h, t = replay(trace, layer, cache, policy, weights, args.top_k)
                hits += h
                total += t
            rates[policy] = hits / total
        gap = rates["belady"] - rates["lru"]
        closed = lambda p: 100 * (rates[p] - rates["lru"]) / gap
        print(f"| {cache} | {rates['lru']:.4f} | {rates['belady']:.4f} | {rates['knows_popularity']:.4f} | "
              f"{rates['knows_topic']:.4f} | {closed('knows_popularity'):.0f}% | {closed('knows_topic'):.0f}% |")


def rebuild_topics(args, rng, trace, popularity, orders):
    """Replays synthetic_trace.py's draws (topic, then every routing choice) to recover each
    sequence's topic, and checks the replay against the trace."""
    topics = []
    by_seq = {}
    for token in trace:
        by_seq.setdefault(token["seq"], []).append(token)
    repeat = 0.35
    for seq in sorted(by_seq):
        topic = [rng.sample(range(args.experts), 3) for _ in range(args.layers)]
        topics.append(topic)
        previous = [None] * args.layers
        for token in by_seq[seq]:
            for layer in range(1, args.layers):
                w = [0.0] * args.experts
                for rank, expert in enumerate(orders[layer]):
                    w[expert] = popularity[rank]
                for expert in topic[layer]:
                    w[expert] *= 4.0
                chosen = []
                prev = previous[layer] if token["phase"] == "decode" else None
                if prev:
                    for expert in prev:
                        if len(chosen) < args.top_k and rng.random() < repeat:
                            chosen.append(expert)
                while len(chosen) < args.top_k:
                    expert = rng.choices(range(args.experts), weights=w)[0]
                    if expert not in chosen:
                        chosen.append(expert)
                if chosen != token["layers"][layer]:
                    raise SystemExit(f"the trace was not written with these options (seq {seq}, pos {token['pos']}, layer {layer})")
                previous[layer] = chosen
    return topics


def replay(trace, layer, cache_size, policy, weights, top_k):
    """Hits and requests of one layer's pool; the current token's experts are never evicted."""
    requests = [(token["seq"], token["layers"][layer]) for token in trace]
    next_use = [None] * len(requests)
    seen = {}
    for i in range(len(requests) - 1, -1, -1):
        next_use[i] = dict(seen)
        for expert in requests[i][1]:
            seen[expert] = i
    cache, last, hits, total = set(), {}, 0, 0
    for i, (seq, chosen) in enumerate(requests):
        for expert in chosen:
            total += 1
            if expert in cache:
                hits += 1
            else:
                if len(cache) >= cache_size:
                    candidates = [c for c in cache if c not in chosen]
                    if policy == "lru":
                        victim = min(candidates, key=lambda c: last[c])
                    elif policy == "belady":
                        victim = max(candidates, key=lambda c: next_use[i].get(c, 1 << 30))
                    else:
                        w = weights(layer, seq, topic=policy == "knows_topic")
                        victim = min(candidates, key=lambda c: w[c])
                    cache.discard(victim)
                cache.add(expert)
            last[expert] = (i, chosen.index(expert))
    return hits, total


if __name__ == "__main__":
    main()
