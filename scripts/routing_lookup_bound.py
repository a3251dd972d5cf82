#!/usr/bin/env python3
"""How well a token's routing is foretold by an earlier token whose routing matched (standard library only).

A "routing lookup" guesses the next token's experts a whole token ahead, as prompt-lookup decoding guesses its tokens:
when the routing of the current token (and of the `--context` - 1 tokens before it) in the first
`--fingerprint-layers` MoE layers equals that of an earlier position j of the same sequence, the next token is
guessed to route as token j + 1 did, in every layer. This script measures it offline on MoEServe routing traces
(`generate --record-trace`, docs/expert-cache.md), over the decode tokens:

  coverage   share of decode tokens (with --all-tokens, of every token) whose predecessor had such a match
             (the latest earlier match is used);
  lookup     per layer, the mean share of the next token's experts the lookup guessed (|guess ∩ actual| / top-k),
             over the covered tokens;
  history    the same share for "the next token routes as this one did", over the same tokens (the baseline a
             cache's recency already exploits).

    scripts/routing_lookup_bound.py TRACE.jsonl [...] [--fingerprint-layers 3] [--context 2] [--all-tokens]

prints one JSON object for all traces together. Figures: docs/PREDICTOR.md, "Session 38: a routing lookup".
"""
import argparse
import json
import sys


def load(path):
    """Per sequence, in order: (phase, [frozenset of experts per layer, or None]) for each token."""
    sequences = {}
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                token = json.loads(line)
                layers = [None if experts is None else frozenset(experts) for experts in token["layers"]]
            except (ValueError, KeyError, TypeError) as error:
                sys.exit(f"{path}:{number}: not a routing trace line ({error})")
            sequences.setdefault(token.get("seq", 0), []).append((token.get("phase", "unknown"), layers))
    return list(sequences.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("traces", nargs="+")
    parser.add_argument("--fingerprint-layers", type=int, default=3,
                        help="recorded MoE layers (from the first) whose experts must match (default 3)")
    parser.add_argument("--context", type=int, default=2, help="consecutive tokens that must match (default 2)")
    parser.add_argument("--all-tokens", action="store_true",
                        help="score prefill tokens too: a prompt of real text, teacher-forced, as its decode would route")
    args = parser.parse_args()
    if args.fingerprint_layers < 1 or args.context < 1:
        sys.exit("--fingerprint-layers and --context must be at least 1")

    scored = covered = 0
    layer_count = 0
    lookup_sum, history_sum = [], []
    for path in args.traces:
        for tokens in load(path):
            recorded = [i for i, experts in enumerate(tokens[0][1]) if experts is not None]
            if not recorded:
                continue
            top_k = len(tokens[0][1][recorded[0]])
            if layer_count == 0:
                layer_count = len(recorded)
                lookup_sum, history_sum = [0.0] * layer_count, [0.0] * layer_count
            elif len(recorded) != layer_count:
                sys.exit(f"{path}: {len(recorded)} recorded layers, the traces before had {layer_count}")
            fingerprints = [tuple(layers[i] for i in recorded[:args.fingerprint_layers]) for _, layers in tokens]
            # Key of the `context` tokens ending at t → the latest such t seen so far.
            latest = {}
            for t in range(len(tokens) - 1):
                key = tuple(fingerprints[t - args.context + 1:t + 1]) if t >= args.context - 1 else None
                if args.all_tokens or tokens[t + 1][0] == "decode":
                    scored += 1
                    match = latest.get(key) if key is not None else None
                    if match is not None:
                        covered += 1
                        following, actual, current = tokens[match + 1][1], tokens[t + 1][1], tokens[t][1]
                        for slot, layer in enumerate(recorded):
                            lookup_sum[slot] += len(following[layer] & actual[layer]) / top_k
                            history_sum[slot] += len(current[layer] & actual[layer]) / top_k
                if key is not None:
                    latest[key] = t
    if scored == 0:
        sys.exit("no decode tokens in these traces (--all-tokens scores the prompts' too)")
    per = lambda sums: [round(s / covered, 3) if covered else None for s in sums]
    print(json.dumps({"traces": len(args.traces), "fingerprint_layers": args.fingerprint_layers, "context": args.context,
                      "tokens_scored": scored, "all_tokens": args.all_tokens, "covered": covered, "coverage": round(covered / scored, 3),
                      "lookup_by_layer": per(lookup_sum), "history_by_layer": per(history_sum)}))


if __name__ == "__main__":
    main()
