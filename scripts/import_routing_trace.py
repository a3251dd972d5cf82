#!/usr/bin/env python3
"""Converts a routing recording of the per-(problem, layer, token) kind into a MoEServe trace.

Input: JSON Lines, one record per problem, layer and decode token, as vLLM-based recorders write them:
    {"problem_id": 0, "layer": 15, "token_idx": 42, "experts": [3, 7], ...}
(`token_pos` is accepted for `token_idx`; other fields are ignored). Output: MoEServe's trace format
(docs/expert-cache.md), one line per token in the order it ran:
    {"seq": s, "pos": p, "phase": "decode", "layers": [[3, 7], ...]}
Each problem of each input file becomes its own sequence, in file order then problem order; a layer a
token has no record for is null (the replay skips it). Prints a one-line summary to stderr.

    scripts/import_routing_trace.py OUT.jsonl IN.jsonl [IN.jsonl ...] [--layers N]
"""
import argparse
import collections
import json
import sys


def read_records(path):
    tokens = collections.defaultdict(dict)  # (problem, token) -> {layer: experts}
    for line_number, line in enumerate(open(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            token = record["token_idx"] if "token_idx" in record else record["token_pos"]
            key = (int(record["problem_id"]), int(token))
            layer = int(record["layer"])
            experts = [int(e) for e in record["experts"]]
        except (ValueError, KeyError, TypeError) as error:
            sys.exit(f"{path}:{line_number}: not a routing record ({error!r})")
        if layer in tokens[key]:
            sys.exit(f"{path}:{line_number}: problem {key[0]} token {key[1]} layer {layer} recorded twice")
        tokens[key][layer] = experts
    return tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--layers", type=int, help="layer count (default: the highest recorded layer + 1)")
    args = parser.parse_args()

    files = [read_records(path) for path in args.inputs]
    layer_count = args.layers or 1 + max(layer for tokens in files for layers in tokens.values() for layer in layers)
    lines, sequences, missing = [], 0, 0
    for tokens in files:
        for problem in sorted({problem for problem, _ in tokens}):
            for _, position in sorted(key for key in tokens if key[0] == problem):
                layers = tokens[(problem, position)]
                row = [layers.get(layer) for layer in range(layer_count)]
                missing += row.count(None)
                lines.append(json.dumps({"seq": sequences, "pos": position, "phase": "decode", "layers": row}))
            sequences += 1
    with open(args.out, "w") as out:
        out.write("\n".join(lines) + "\n")
    print(f"{args.out}: {len(lines)} tokens in {sequences} sequences, {layer_count} layers, "
          f"{missing} layer records missing", file=sys.stderr)


if __name__ == "__main__":
    main()
