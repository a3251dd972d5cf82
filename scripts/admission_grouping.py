#!/usr/bin/env python3
"""Would admission that groups sequences by predicted routing read fewer experts? (issue 26 item 5)

Records the demo model's routing for every prompt of scripts/prompts/{python,prose}.jsonl (sampled
decode, `generate --record-trace`), then replays decode steps of batches of B sequences and reports
the distinct experts a step runs per MoE layer (what the step must have resident or read) when the
batch is
  - drawn at random (first come, first served over a mixed queue),
  - drawn from one domain (an oracle that knows each prompt's topic),
  - grown greedily from a random seed by the cosine similarity of each prompt's *prefill* routing
    histogram to the batch's (what an admission policy could know before decoding starts).
Also prints how well a prompt's prefill routing predicts its own decode routing against other prompts'.

    scripts/admission_grouping.py [--model DemoModel] [--tokens 96] [--batches 4,8,12]
"""
import argparse, json, math, os, random, statistics, subprocess, tempfile

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="DemoModel")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--batches", default="4,8,12")
    ap.add_argument("--samples", type=int, default=200)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = os.path.join(root, ".build/release/moe-serve")
    traces, domains = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for domain in ("python", "prose"):
            for line in open(os.path.join(root, "scripts/prompts", domain + ".jsonl")):
                path = os.path.join(tmp, f"{len(traces)}.jsonl")
                subprocess.run([binary, "generate", "--model", args.model, "--prompt", json.loads(line),
                                "--max-tokens", str(args.tokens), "--temperature", "0.7", "--seed", str(len(traces)),
                                "--ignore-eos", "--record-trace", path], check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                traces.append([json.loads(l) for l in open(path)])
                domains.append(domain)
    n = len(traces)
    layers = len(traces[0][0]["layers"])
    experts = 1 + max(e for t in traces for r in t for ex in r["layers"] for e in ex)
    prefill = [[r for r in t if r["phase"] == "prefill"] for t in traces]
    decode = [[r for r in t if r["phase"] != "prefill"] for t in traces]

    def histogram(rows):
        v = [0.0] * (layers * experts)
        for r in rows:
            for l, chosen in enumerate(r["layers"]):
                for e in chosen:
                    v[l * experts + e] += 1
        total = sum(v) or 1
        return [x / total for x in v]

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    signature = [histogram(p) for p in prefill]
    usage = [histogram(d) for d in decode]
    own = statistics.mean(cosine(signature[i], usage[i]) for i in range(n))
    others = statistics.mean(statistics.mean(cosine(signature[i], usage[j]) for j in range(n) if j != i) for i in range(n))
    same = statistics.mean(cosine(usage[i], usage[j]) for i in range(n) for j in range(i + 1, n) if domains[i] == domains[j])
    cross = statistics.mean(cosine(usage[i], usage[j]) for i in range(n) for j in range(i + 1, n) if domains[i] != domains[j])

    def union_per_layer_step(group):
        steps = min(len(decode[i]) for i in group)
        return sum(len({e for i in group for e in decode[i][s]["layers"][l]})
                   for s in range(steps) for l in range(layers)) / (steps * layers)

    rng = random.Random(1)

    def greedy(size):
        pool = list(range(n)); rng.shuffle(pool)
        group = [pool.pop()]
        while len(group) < size:
            centre = [sum(signature[k][x] for k in group) for x in range(layers * experts)]
            best = max(pool, key=lambda j: cosine(signature[j], centre))
            pool.remove(best); group.append(best)
        return group

    rows = []
    for size in (int(b) for b in args.batches.split(",")):
        random_draw = statistics.mean(union_per_layer_step(rng.sample(range(n), size)) for _ in range(args.samples))
        one_domain = statistics.mean(union_per_layer_step(rng.sample([i for i in range(n) if domains[i] == d], size))
                                     for d in ("python", "prose") for _ in range(args.samples // 2))
        grouped = statistics.mean(union_per_layer_step(greedy(size)) for _ in range(args.samples))
        rows.append({"batch": size, "random": round(random_draw, 2), "one_domain": round(one_domain, 2),
                     "grouped_by_prefill_routing": round(grouped, 2),
                     "grouped_vs_random": round(grouped / random_draw, 3)})
    print(json.dumps({"model": args.model, "prompts": n, "decode_tokens": args.tokens, "experts": experts,
                      "top_k": len(traces[0][0]["layers"][0]),
                      "prefill_to_own_decode_cosine": round(own, 3), "prefill_to_other_decode_cosine": round(others, 3),
                      "decode_cosine_same_domain": round(same, 3), "decode_cosine_cross_domain": round(cross, 3)}))
    for r in rows:
        print(json.dumps(r))

if __name__ == "__main__":
    main()
