#!/usr/bin/env python3
"""What an eviction policy could close of the LRU→Belady gap, given more and more knowledge (standard library only).

Replays a MoEServe routing trace (docs/expert-cache.md) in one pool shared by all layers, C × recorded layers experts, as
`bench trace` replays its `_global` policies: token by token, layer by layer; a layer's experts for one token are
requested together and stay resident while that request is served; caches start cold; null layers request nothing.
Belady here has no floors, as in `bench trace`, so LRU and Belady match its `lru_global` and `belady_global`.

Besides those two it replays three reference policies, none of which could run online; they bound what knowledge
of a given kind is worth:
  fitted          ranks by expected wait, d + L·(1/P − 1) layer runs (d: layers until the expert's layer runs again,
                  P: its chance of use by the next token), the form `SequenceAwarePolicy` ranks by, with P the share,
                  over the WHOLE trace, of experts in the same state that the next token used. The state: tokens since
                  last use (capped at 33), uses in the last 16 tokens, and uses in this sequence against the average
                  expert's (halves, capped at 4x). Statistics known in hindsight: a reference for what a policy that
                  learns from recency, frequency and the sequence could reach, not a proof that none could do better.
  fitted+current  also never evicts an expert the current token uses in a later layer (what a perfect cross-layer
                  predictor would tell the cache).
  fitted+next     also keeps the experts the next token uses anywhere: one token of the future.

    scripts/trace_policy_bounds.py TRACE.jsonl --cache-per-layer 3,4,5
prints one JSON object per cache size: hits, hit rates and the share of the gap closed per policy.
"""
import argparse
import collections
import json
import math

AGE_CAP = 33
WINDOW = 16


def load(path):
    """Per layer, per token: the experts without repeats, in the recorded order (None where unrecorded); the
    sequence of each token."""
    tokens = [json.loads(line) for line in open(path) if line.strip()]
    layers = max(len(t["layers"]) for t in tokens)
    routing = [[list(dict.fromkeys(t["layers"][layer])) if layer < len(t["layers"]) and t["layers"][layer] is not None else None
                for t in tokens] for layer in range(layers)]
    return routing, [t.get("seq", 0) for t in tokens]


def features_and_expectation(routing, expert_count, sequences, top_k):
    """(layer, expert, token) → its state after that token ran (age, uses in the window, share in the sequence),
    and per state, over the whole trace, the share of experts in it that the next token used."""
    token_count = len(routing[0])
    features, sums = {}, collections.defaultdict(lambda: [0.0, 0])
    for layer, per_token in enumerate(routing):
        for expert in range(expert_count):
            uses = [t for t in range(token_count) if per_token[t] and expert in per_token[t]]
            next_use, last, window = collections.deque(uses), None, collections.deque()
            seq_uses = seq_tokens = 0
            for t in range(token_count):
                if t == 0 or sequences[t] != sequences[t - 1]:
                    seq_uses = seq_tokens = 0
                if per_token[t] is not None:
                    seq_tokens += 1
                if per_token[t] and expert in per_token[t]:
                    last = t
                    window.append(t)
                    next_use.popleft()
                    seq_uses += 1
                while window and t - window[0] >= WINDOW:
                    window.popleft()
                share = seq_uses * expert_count / (top_k * seq_tokens) if seq_tokens else 1.0
                feature = (min(t - last + 1, AGE_CAP) if last is not None else 99, len(window), min(int(share * 2), 8))
                features[(layer, expert, t)] = feature
                used_next = 1.0 if next_use and next_use[0] == t + 1 else 0.0
                entry = sums[feature]
                entry[0] += used_next
                entry[1] += 1
    return features, {feature: total / count for feature, (total, count) in sums.items()}


def replay(routing, capacity, rank, protect_current=False, protect_next=False):
    """(hits, requests) of one shared pool of `capacity` experts, evicting the candidate `rank` puts highest."""
    layer_count, token_count = len(routing), len(routing[0])
    requests = [(t, layer, routing[layer][t]) for t in range(token_count) for layer in range(layer_count)
                if routing[layer][t] is not None]
    resident, last_request, hits, total = set(), {}, 0, 0
    for index, (t, layer, experts) in enumerate(requests):
        need = {(layer, expert) for expert in experts}
        total += len(need)
        hits += len(need & resident)
        keep = set()
        if protect_current:
            keep |= {(later, e) for later in range(layer + 1, layer_count) if routing[later][t] for e in routing[later][t]}
        if protect_next and t + 1 < token_count:
            keep |= {(any_layer, e) for any_layer in range(layer_count) if routing[any_layer][t + 1]
                     for e in routing[any_layer][t + 1]}
        # The engine touches the residents first, then loads the misses, each in the request's order.
        touched = [e for e in experts if (layer, e) in resident] + [e for e in experts if (layer, e) not in resident]
        for key in [(layer, expert) for expert in experts if (layer, expert) not in resident]:
            while len(resident) >= capacity:
                candidates = [k for k in resident if k not in need]
                unprotected = [k for k in candidates if k not in keep]
                # Ties go to the lower (layer, expert), as in `BeladyPolicy`.
                victim = max(unprotected or candidates, key=lambda k: (rank(k, t, layer, last_request), -k[0], -k[1]))
                resident.remove(victim)
            resident.add(key)
        for position, expert in enumerate(touched):
            last_request[(layer, expert)] = (index, position)
    return hits, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--cache-per-layer", required=True, help="comma-separated sizes, e.g. 3,4,5")
    args = parser.parse_args()

    routing, sequences = load(args.trace)
    layer_count, token_count = len(routing), len(routing[0])
    expert_count = 1 + max(e for per_token in routing for experts in per_token if experts for e in experts)
    top_k = max(len(experts) for per_token in routing for experts in per_token if experts)
    features, expected = features_and_expectation(routing, expert_count, sequences, top_k)

    next_use_token = {}  # (layer, expert, t) → the first token after t that uses it (math.inf if none)
    for layer, per_token in enumerate(routing):
        following = [math.inf] * expert_count
        for t in range(token_count - 1, -1, -1):
            for expert in range(expert_count):
                next_use_token[(layer, expert, t)] = following[expert]
            if per_token[t]:
                for expert in per_token[t]:
                    following[expert] = t

    def layers_until(key_layer, layer):
        return key_layer - layer if key_layer > layer else key_layer - layer + layer_count

    def lru(key, t, layer, last_request):
        index, position = last_request[key]
        return (-index, -position)

    def belady(key, t, layer, last_request):
        key_layer, expert = key
        if key_layer > layer and routing[key_layer][t] and expert in routing[key_layer][t]:
            return key_layer - layer
        return (next_use_token[(key_layer, expert, t)] - t) * layer_count + key_layer - layer

    def fitted(key, t, layer, last_request):
        key_layer, expert = key
        seen = t if key_layer <= layer else t - 1  # the last token that has run the key's layer
        if seen < 0:
            return math.inf
        chance = max(expected[features[(key_layer, expert, seen)]], 1e-3)
        return layers_until(key_layer, layer) + layer_count * (1 / chance - 1)

    recorded_layers = sum(1 for per_token in routing if any(experts is not None for experts in per_token))
    for per_layer in [int(c) for c in args.cache_per_layer.split(",")]:
        capacity = per_layer * recorded_layers
        counts = {
            "lru": replay(routing, capacity, lru),
            "belady": replay(routing, capacity, belady),
            "fitted": replay(routing, capacity, fitted),
            "fitted+current": replay(routing, capacity, fitted, protect_current=True),
            "fitted+next": replay(routing, capacity, fitted, protect_current=True, protect_next=True),
        }
        rates = {name: hits / requests for name, (hits, requests) in counts.items()}
        gap = rates["belady"] - rates["lru"]
        print(json.dumps({
            "cache_per_layer": per_layer, "layers": layer_count, "experts": expert_count, "tokens": token_count,
            "requests": counts["lru"][1],
            "hits": {name: hits for name, (hits, _) in counts.items()},
            "hit_rate": {name: round(rate, 4) for name, rate in rates.items()},
            "gap_closed": {name: round((rate - rates["lru"]) / gap, 3) if gap > 0 else None
                           for name, rate in rates.items()},
        }))


if __name__ == "__main__":
    main()
