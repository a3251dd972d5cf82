#!/usr/bin/env python3
"""The most an online policy could hit on scripts/synthetic_trace.py's trace in ONE pool shared by
all layers (the runtime's cache), if it knew the generator (standard library only).

scripts/synthetic_trace_bound.py bounds per-layer pools, where the previous token's experts of a
layer are never candidates when that layer misses. In a shared pool they are: a miss in layer L
can evict what layer L-1 used a moment ago, which the next token repeats with the generator's
`--repeat` chance. This replays the shared pool (C × recorded layers slots, floors of top-k, the
current layer's experts pinned, as `bench trace`'s `*_global` rows) with a policy that evicts the
resident expert least likely to be used at its layer's next step: the generator's weights with
the sequence's topic, and the repeat chance for the experts the previous step used. With
`--no-repeat` it knows the weights and topics only. Compare the hit rates with `bench trace`'s
`lru_global` and `belady_global` to read the share of the gap.

    scripts/synthetic_trace_bound_global.py --layers 8 --experts 32 --top-k 4 --sequences 6 --seed 1 --caches 8,12,16
"""
import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from synthetic_trace import Generator, add_generator_arguments  # noqa: E402


def chance_of_use(weights, expert, repeated, top_k, repeat):
    """P(expert is routed at the layer's next step): the repeat draw, then weighted draws for the rest (approximate)."""
    from_repeat = repeat if expert in repeated else 0.0
    draws = top_k - repeat * len(repeated)
    return from_repeat + (1 - from_repeat) * (1 - (1 - weights[expert] / sum(weights)) ** draws)


def replay(generator, tokens, cache, knows_repeat):
    args = generator.args
    recorded = [layer for layer in range(args.layers) if tokens[0][0]["layers"][layer] is not None]
    capacity, floor = cache * len(recorded), args.top_k
    resident, slots = set(), collections.Counter()
    hits = requests = 0
    for index, (token, topic) in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        for layer in recorded:
            group = list(dict.fromkeys(token["layers"][layer]))
            pinned = {(layer, expert) for expert in group}

            def score(key):
                other, expert = key
                if other > layer:   # still to run in this token
                    repeated = tokens[index - 1][0]["layers"][other] if token["phase"] == "decode" and knows_repeat else []
                    return chance_of_use(generator.weights(other, topic), expert, repeated, args.top_k, args.repeat)
                if following is None:
                    return 0.0
                next_token, next_topic = following
                same = next_token["seq"] == token["seq"]
                repeated = token["layers"][other] if same and next_token["phase"] == "decode" and knows_repeat else []
                return chance_of_use(generator.weights(other, next_topic if same else None), expert, repeated,
                                     args.top_k, args.repeat)

            for expert in group:
                requests += 1
                hits += (layer, expert) in resident
            for expert in group:
                key = (layer, expert)
                if key in resident:
                    continue
                if len(resident) >= capacity:
                    candidates = [k for k in resident if k not in pinned and (k[0] == layer or slots[k[0]] > floor)]
                    victim = min(candidates, key=lambda k: (score(k), k))
                    resident.remove(victim)
                    slots[victim[0]] -= 1
                resident.add(key)
                slots[layer] += 1
    return hits / requests


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_generator_arguments(parser)
    parser.add_argument("--caches", default="8,12,16", help="experts cached per layer")
    args = parser.parse_args()
    generator = Generator(args)
    tokens = list(generator.tokens())
    print("| experts cached per layer | knows weights, topics and the repeat | knows weights and topics |")
    print("|---|---|---|")
    for cache in map(int, args.caches.split(",")):
        print(f"| {cache} | {replay(generator, tokens, cache, True):.4f} | {replay(generator, tokens, cache, False):.4f} |")


if __name__ == "__main__":
    main()
