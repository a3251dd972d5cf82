#!/usr/bin/env python3
"""Writes a synthetic routing trace in the `bench trace` format (standard library only).

Routing is Zipf-like per layer (each layer has its own popularity order), with a per-sequence
"topic" that re-ranks a few experts so that sequences differ, and decode tokens that repeat
the previous token's experts with some probability (the temporal locality trained models
show). Layer 0 is left null, as a dense layer would be. It is a stand-in until traces
recorded from the trained demo model exist; hit rates on it say nothing about real models.

    scripts/synthetic_trace.py --layers 8 --experts 32 --top-k 4 --sequences 6 --seed 1 > trace.jsonl
"""
import argparse
import json
import random


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--sequences", type=int, default=6)
    parser.add_argument("--prompt", type=int, default=48, help="prefill tokens per sequence")
    parser.add_argument("--decode", type=int, default=96, help="decode tokens per sequence")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of expert popularity")
    parser.add_argument("--repeat", type=float, default=0.35, help="chance a decode token reuses an expert of the previous token")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    popularity = [1.0 / (rank + 1) ** args.zipf for rank in range(args.experts)]
    orders = [rng.sample(range(args.experts), args.experts) for _ in range(args.layers)]

    def route(layer, topic, previous):
        weights = [0.0] * args.experts
        for rank, expert in enumerate(orders[layer]):
            weights[expert] = popularity[rank]
        for expert in topic[layer]:
            weights[expert] *= 4.0
        chosen = []
        if previous:
            for expert in previous:
                if len(chosen) < args.top_k and rng.random() < args.repeat:
                    chosen.append(expert)
        while len(chosen) < args.top_k:
            expert = rng.choices(range(args.experts), weights=weights)[0]
            if expert not in chosen:
                chosen.append(expert)
        return chosen

    for seq in range(args.sequences):
        topic = [rng.sample(range(args.experts), 3) for _ in range(args.layers)]
        previous = [None] * args.layers
        for pos in range(args.prompt + args.decode):
            phase = "prefill" if pos < args.prompt else "decode"
            layers = [None]
            for layer in range(1, args.layers):
                prev = previous[layer] if phase == "decode" else None
                previous[layer] = route(layer, topic, prev)
                layers.append(previous[layer])
            print(json.dumps({"seq": seq, "pos": pos, "phase": phase, "layers": layers, "note": "synthetic"}))


if __name__ == "__main__":
    main()
