#!/usr/bin/env python3
"""What a batch step's expert hit rate could be if the step did not pin its whole union at once (standard library only).

A saturated decode step needs nearly every expert of a layer. Today it pins the layer's residents and reserves room
for every miss at once (`OffloadingExpertCache.withExperts`, `bench trace --as-recorded`), so the running layer's
stream takes its whole union's worth of slots from the other layers' experts. Streamed, each expert would hold a
slot only while it is read and run: the residents run first and are released, and at most W misses are held at a
time, so the victims can be the running layer's finished experts.

Replays the decode steps of a trace `bench batch --record-trace` wrote (lines with "step"), layer by layer, each
step's union once, in one pool of C experts, both ways, with two rankings:
  belady    the expert whose next request is farthest away (no online policy does better under the same rules);
  distance  the layer that just ran first, then least recently used: the default's ranking by expected wait when
            every expert is needed every step.

    scripts/batch_stream_bound.py TRACE.jsonl --capacity 256 [--window 8]
prints one JSON line: hits, misses and hit rates over the decode steps, and misses per step.
"""
import argparse
import collections
import json
import math


def load_requests(path):
    """[(step index, layer, union in first-seen order)] and the index of the last step holding a prefill row."""
    steps = collections.OrderedDict()
    for line in open(path):
        if line.strip():
            token = json.loads(line)
            if "step" not in token:
                raise SystemExit(f"{path}: no \"step\" field; record the trace with bench batch --record-trace")
            steps.setdefault(token["step"], []).append(token)
    step_list = list(steps.values())
    layer_count = max(len(token["layers"]) for step in step_list for token in step)
    last_prefill = max((index for index, step in enumerate(step_list) if any(t["phase"] == "prefill" for t in step)),
                       default=-1)
    requests = []
    for index, step in enumerate(step_list):
        for layer in range(layer_count):
            union = list(dict.fromkeys(e for t in step if layer < len(t["layers"]) and t["layers"][layer]
                                       for e in t["layers"][layer]))
            if union:
                requests.append((index, layer, union))
    return requests, layer_count, last_prefill


def replay(requests, layer_count, last_prefill, capacity, streamed, ranking, window):
    """(decode hits, decode misses) of one pool of `capacity` experts."""
    next_request = [None] * len(requests)
    following = {}
    for index in range(len(requests) - 1, -1, -1):
        _, layer, union = requests[index]
        next_request[index] = {e: following.get((layer, e), math.inf) for e in union}
        for e in union:
            following[(layer, e)] = index
    resident, last_use = {}, {}
    hits = misses = 0
    for index, (step, layer, union) in enumerate(requests):
        keys = [(layer, e) for e in union]
        missing = [k for k in keys if k not in resident]
        if step > last_prefill:
            hits += len(keys) - len(missing)
            misses += len(missing)
        for key in keys:
            if key in resident:
                resident[key] = next_request[index][key[1]]
                last_use[key] = index

        def evict(protected):
            candidates = [k for k in resident if k not in protected]
            # Ties go to the lower (layer, expert), as in `BeladyPolicy`.
            if ranking == "belady":
                victim = max(candidates, key=lambda k: (resident[k], -k[0], -k[1]))
            else:
                victim = max(candidates, key=lambda k: ((k[0] - layer - 1) % layer_count, -last_use[k], -k[0], -k[1]))
            del resident[victim]

        held = collections.deque()
        for key in missing:
            protected = (set(held) | {key}) if streamed else set(keys)
            if len(resident) >= capacity:
                evict(protected)
            resident[key] = next_request[index][key[1]]
            last_use[key] = index
            if streamed:
                held.append(key)
                if len(held) > window:
                    held.popleft()
    return hits, misses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--capacity", type=int, required=True, help="experts the cache holds")
    parser.add_argument("--window", type=int, default=8, help="misses held at once when streamed")
    args = parser.parse_args()
    requests, layer_count, last_prefill = load_requests(args.trace)
    decode_steps = len({step for step, _, _ in requests if step > last_prefill})
    report = {"capacity": args.capacity, "window": args.window, "decode_steps": decode_steps}
    for mode, streamed in (("pinned", False), ("streamed", True)):
        for ranking in ("belady", "distance"):
            hits, misses = replay(requests, layer_count, last_prefill, args.capacity, streamed, ranking, args.window)
            report[f"{mode}_{ranking}"] = {"hits": hits, "misses": misses, "hit_rate": round(hits / max(hits + misses, 1), 4),
                                           "misses_per_step": round(misses / max(decode_steps, 1), 1)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
