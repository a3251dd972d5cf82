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


def add_generator_arguments(parser):
    """The generator's options (shared with scripts/synthetic_trace_bound.py)."""
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--sequences", type=int, default=6)
    parser.add_argument("--prompt", type=int, default=48, help="prefill tokens per sequence")
    parser.add_argument("--decode", type=int, default=96, help="decode tokens per sequence")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of expert popularity")
    parser.add_argument("--repeat", type=float, default=0.35, help="chance a decode token reuses an expert of the previous token")
    parser.add_argument("--seed", type=int, default=0)


class Generator:
    """The trace's random process: `weights` gives the drawing weights of a layer's experts
    (with or without a sequence's topic), `tokens` yields the trace one token at a time."""

    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.popularity = [1.0 / (rank + 1) ** args.zipf for rank in range(args.experts)]
        self.orders = [self.rng.sample(range(args.experts), args.experts) for _ in range(args.layers)]

    def weights(self, layer, topic=None):
        """Layer `layer`'s weight per expert: its Zipf popularity, ×4 for the topic's experts."""
        weights = [0.0] * self.args.experts
        for rank, expert in enumerate(self.orders[layer]):
            weights[expert] = self.popularity[rank]
        for expert in (topic[layer] if topic else []):
            weights[expert] *= 4.0
        return weights

    def route(self, layer, topic, previous):
        weights = self.weights(layer, topic)
        chosen = []
        if previous:
            for expert in previous:
                if len(chosen) < self.args.top_k and self.rng.random() < self.args.repeat:
                    chosen.append(expert)
        while len(chosen) < self.args.top_k:
            expert = self.rng.choices(range(self.args.experts), weights=weights)[0]
            if expert not in chosen:
                chosen.append(expert)
        return chosen

    def tokens(self):
        """Yields (token record, the sequence's topic) in trace order."""
        args = self.args
        for seq in range(args.sequences):
            topic = [self.rng.sample(range(args.experts), 3) for _ in range(args.layers)]
            previous = [None] * args.layers
            for pos in range(args.prompt + args.decode):
                phase = "prefill" if pos < args.prompt else "decode"
                layers = [None]
                for layer in range(1, args.layers):
                    prev = previous[layer] if phase == "decode" else None
                    previous[layer] = self.route(layer, topic, prev)
                    layers.append(previous[layer])
                yield {"seq": seq, "pos": pos, "phase": phase, "layers": layers, "note": "synthetic"}, topic


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_generator_arguments(parser)
    for token, _ in Generator(parser.parse_args()).tokens():
        print(json.dumps(token))


if __name__ == "__main__":
    main()
