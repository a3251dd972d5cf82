#!/usr/bin/env python3
"""Expert-cache hit rate with session affinity against least connections (docs/SCALING.md).

Two replicas of the built `moe-serve serve` on the demo model with a tight --memory-budget (the
experts of both workloads do not fit one replica's cache), behind Debian's nginx with the committed
Deploy/nginx/moe-serve.conf. Two workloads: Python code (scripts/prompts/python.jsonl) and English
prose (scripts/prompts/prose.jsonl), one client each, sending requests one after another.
  least_conn: no X-Session-Id header, so nginx balances by open connections: both replicas see both workloads;
  affinity:   each workload sends its own X-Session-Id (chosen so the two hash to different replicas, as
              two tenants' sessions would spread), so each replica sees one workload.
The same two replicas serve every phase (equal cache sizes for both routings); phases alternate
(LC, AFF, AFF, LC, ...) over --rounds, each starting with --warmup requests per workload that let the
caches adapt to the routing (not measured). The hit rate is Δhits / Δ(hits + misses) of
moe_expert_cache_{hits,misses}_total summed over both replicas' /metrics over the measured requests.
Prints one line per phase on stderr and JSON on stdout.

  scripts/bench_affinity.sh            (holds the build lock; the same options pass through)
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deploy_harness import ROOT, Nginx, Replica, complete, free_port, metric_sum  # noqa: E402


def load_prompts(name):
    return [json.loads(line) for line in open(os.path.join(ROOT, "scripts", "prompts", name)) if line.strip()]


def cache_totals(replicas):
    # The server feeds these counters from a sampler that runs once a second: let it catch up.
    time.sleep(1.5)
    out = []
    for r in replicas:
        m = r.metrics()
        out.append((metric_sum(m, "moe_expert_cache_hits_total"), metric_sum(m, "moe_expert_cache_misses_total"),
                    metric_sum(m, "moe_expert_cache_bytes_budget")))
    return out


def pick_sessions(nginx, ports):
    """Two session ids that nginx's consistent hash sends to different replicas (read from its access log)."""
    chosen = {}
    for i in range(64):
        sid = f"tenant-{i}"
        complete(nginx.port, "/tokenize", {"content": "x"}, {"X-Session-Id": sid, "X-Request-Tag": f"probe-{sid}"})
        time.sleep(0.05)
        entry = next((e for e in nginx.access_log() if e["tag"] == f"probe-{sid}"), None)
        if entry and entry["upstream"]:
            chosen.setdefault(entry["upstream"][-1], sid)
        if len(chosen) == 2:
            return list(chosen.values())
    raise RuntimeError("no two sessions found that hash to different replicas")


def run_phase(args, nginx, replicas, mode, families, sessions, phase_index):
    """One phase on already running replicas: --warmup requests per workload re-shape the caches for
    this routing (not measured), then --requests per workload are measured."""
    use = sessions if mode == "affinity" else [None, None]
    barrier = threading.Barrier(len(families) + 1)
    errors = []

    def client(index, prompts):
        rng = random.Random(1000 * phase_index + index)
        headers = {"X-Session-Id": use[index]} if use[index] else {}
        for n in range(args.warmup + args.requests):
            if n == args.warmup:
                barrier.wait()  # both workloads warmed: the main thread snapshots the counters
                barrier.wait()
            body = {"prompt": prompts[rng.randrange(len(prompts))], "max_tokens": args.max_tokens,
                    "temperature": 0.8, "seed": rng.randrange(1 << 30)}
            outcome, detail = complete(nginx.port, "/v1/completions", body, headers, timeout=120)
            if outcome != "ok":
                errors.append(f"{outcome}: {detail}")

    log_start = len(nginx.access_log())
    threads = [threading.Thread(target=client, args=(i, prompts)) for i, prompts in enumerate(families)]
    for t in threads:
        t.start()
    barrier.wait()
    before = cache_totals(replicas)
    barrier.wait()
    for t in threads:
        t.join()
    after = cache_totals(replicas)
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")

    def rate(a, b):
        hits = sum(y[0] - x[0] for x, y in zip(a, b))
        misses = sum(y[1] - x[1] for x, y in zip(a, b))
        return hits / (hits + misses) if hits + misses else 0.0, int(hits + misses)

    hit_rate, lookups = rate(before, after)
    per_replica = [rate([b], [a])[0] for b, a in zip(before, after)]
    served = {}
    for e in nginx.access_log()[log_start:]:
        if e["request"].startswith("POST /v1/completions") and e["upstream"]:
            served[e["upstream"][-1]] = served.get(e["upstream"][-1], 0) + 1
    return {"mode": mode, "hit_rate": hit_rate, "lookups": lookups, "per_replica": per_replica,
            "requests_per_replica": sorted(served.values()), "cache_budget_bytes": [int(x[2]) for x in after]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, ".build", "release", "moe-serve"))
    parser.add_argument("--memory-budget", default="80MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--requests", type=int, default=40, help="measured requests per workload per phase")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    families = [load_prompts("python.jsonl"), load_prompts("prose.jsonl")]
    workdir = tempfile.mkdtemp(prefix="moe-affinity-")
    ports = [free_port(), free_port()]
    # The same two processes serve every phase, so both routings run with the same cache sizes (the
    # expert cache is what the budget leaves after the process's measured size, which varies by a MiB).
    replicas = [Replica(args.binary, p, workdir, f"replica{i}", ["--memory-budget", args.memory_budget])
                for i, p in enumerate(ports)]
    nginx = Nginx(workdir, ports)
    results = []
    order = []
    for r in range(args.rounds):
        order += ["least_conn", "affinity"] if r % 2 == 0 else ["affinity", "least_conn"]
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready()
        nginx.start()
        sessions = pick_sessions(nginx, ports)
        for i, mode in enumerate(order):
            result = run_phase(args, nginx, replicas, mode, families, sessions, i)
            results.append(result)
            print(f"{mode:10s} hit rate {result['hit_rate']:.3f} over {result['lookups']} lookups, per replica "
                  f"{[round(x, 3) for x in result['per_replica']]}, requests per replica {result['requests_per_replica']}, "
                  f"expert caches {[round(b / 2**20, 1) for b in result['cache_budget_bytes']]} MiB", file=sys.stderr)
    finally:
        nginx.stop()
        for r in replicas:
            r.stop()
    summary = {}
    for mode in ("least_conn", "affinity"):
        rates = [r["hit_rate"] for r in results if r["mode"] == mode]
        summary[mode] = {"median_hit_rate": statistics.median(rates), "runs": rates}
    print(f"median hit rate: least_conn {summary['least_conn']['median_hit_rate']:.3f}, "
          f"affinity {summary['affinity']['median_hit_rate']:.3f} (sessions {sessions})", file=sys.stderr)
    print(json.dumps({"memory_budget": args.memory_budget, "max_tokens": args.max_tokens, "requests": args.requests,
                      "warmup": args.warmup, "sessions": sessions, "summary": summary, "phases": results}, indent=1))


if __name__ == "__main__":
    main()
