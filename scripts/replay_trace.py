#!/usr/bin/env python3
"""Independent LRU and Belady replay of a routing trace (standard library only), to
cross-check `moe-serve bench trace`.

Semantics (as issue 6 defines them): each layer has its own cache of C experts; a token's
experts in one layer (repeats dropped) are requested together and must all be resident at
once, so the resident ones count as hits and cannot be evicted by that token's misses; caches
start cold and persist across sequences; null layers make no request. Belady evicts the
resident expert (not in the current request) whose next request is farthest away, the lowest
expert index among ties; LRU evicts the least recently requested.

    scripts/replay_trace.py TRACE.jsonl --cache-per-layer C
prints {"lru": {"hit_rate": h, "hits": n, "requests": m, "per_layer": [...]}, "belady": {...}}.
"""
import argparse
import json


def distinct(experts):
    """`experts` without repeats, first occurrence kept."""
    result = []
    for expert in experts:
        if expert not in result:
            result.append(expert)
    return result


def read_requests(path, tokens=None):
    """[(layer, [experts])] in replay order, plus the number of layer slots. With a list as
    `tokens`, appends each request group's trace record to it (same order)."""
    groups = []
    layer_count = 0
    with open(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            layers = record["layers"]
            layer_count = max(layer_count, len(layers))
            for layer, experts in enumerate(layers):
                if experts is None:
                    continue
                groups.append((layer, distinct(experts)))
                if tokens is not None:
                    tokens.append(record)
    return groups, layer_count


def next_uses(groups):
    """For each request (flattened in order), the index of the next group requesting the same
    (layer, expert), or infinity."""
    flat = [(layer, expert, index) for index, (layer, experts) in enumerate(groups) for expert in experts]
    result = [float("inf")] * len(flat)
    upcoming = {}
    for i in range(len(flat) - 1, -1, -1):
        layer, expert, index = flat[i]
        result[i] = upcoming.get((layer, expert), float("inf"))
        upcoming[(layer, expert)] = index
    return result


def replay(groups, layer_count, capacity, policy, outcomes=None):
    """Hit rates of `policy` (lru or belady); with a list as `outcomes`, appends 1 (hit) or 0
    (miss) for each request in replay order."""
    future = next_uses(groups) if policy == "belady" else None
    caches = [dict() for _ in range(layer_count)]  # expert -> LRU tick or next use
    hits = [0] * layer_count
    requests = [0] * layer_count
    clock = 0
    cursor = 0
    for layer, experts in groups:
        cache = caches[layer]
        misses = []
        for expert in experts:
            requests[layer] += 1
            value = future[cursor] if future else None
            cursor += 1
            if outcomes is not None:
                outcomes.append(1 if expert in cache else 0)
            if expert in cache:
                hits[layer] += 1
                clock += 1
                cache[expert] = value if future else clock
            else:
                misses.append((expert, value))
        for expert, value in misses:
            if len(cache) >= capacity:
                candidates = [e for e in cache if e not in experts]
                if future:
                    victim = min(candidates, key=lambda e: (-cache[e], e))
                else:
                    victim = min(candidates, key=lambda e: (cache[e], e))
                del cache[victim]
            clock += 1
            cache[expert] = value if future else clock
    total_hits, total_requests = sum(hits), sum(requests)
    return {
        "hit_rate": total_hits / total_requests if total_requests else 0.0,
        "hits": total_hits,
        "requests": total_requests,
        "per_layer": [h / r if r else None for h, r in zip(hits, requests)],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--cache-per-layer", type=int, required=True)
    args = parser.parse_args()
    groups, layer_count = read_requests(args.trace)
    top_k = max((len(experts) for _, experts in groups), default=0)
    if args.cache_per_layer < top_k:
        raise SystemExit(f"a cache of {args.cache_per_layer} experts per layer cannot hold the {top_k} experts one token uses")
    result = {policy: replay(groups, layer_count, args.cache_per_layer, policy) for policy in ("lru", "belady")}
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
