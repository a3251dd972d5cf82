#!/usr/bin/env python3
"""Throughput mode through the real server: aggregate decode speed of N concurrent streaming sequences.

For each N in turn: starts `moe-serve serve --max-sequences N` on MODEL (extra flags after `--`), sends
R = N × REQUESTS_PER_SLOT (default 1) streaming `/v1/completions` requests at once (distinct prompts from
scripts/prompts/python.jsonl, temperature 0.7, GEN tokens each, `logprobs: 0` so that every token is its own
chunk), and timestamps each token as it arrives. The engine delivers a step's tokens together, so the arrival
times mark the steps' ends. It reports two windows, as `bench batch` does; both open when the N-th sequence has
its first token (every slot decoding):

- whole: to the last token of all;
- all slots busy: to the (R − N + 1)-th request's end, the first after which fewer than N requests are left.
  With R = N this is the first request's end: the steps that ran all N. With R > N a finished request's slot
  goes to a waiting one (its prefill rides in the next step), as on a loaded server. Each such step gives N
  tokens, so the rate is N ÷ the steps' length, read from each running request's gaps between its tokens.

One JSON line per N and run (RUNS=R, default 1, round-robin over the Ns), then a table of the medians with the
ratios to the first N (issue 26 item 5, docs/BENCHMARKS.md, "Session 32"):

  MOE_DISK_MBPS=1500 RUNS=3 scripts/serve_throughput.py /dev/shm/olmoe-q4d 1,64 32 -- --expert-cache 960MiB --prefetch on

Standard library only; the server binary is .build/release/moe-serve (`swift build -c release`).
"""
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, ".build", "release", "moe-serve")


def start_server(model, sequences, gen, requests, extra):
    log = tempfile.NamedTemporaryFile(prefix="serve-throughput-", suffix=".log", delete=False)
    command = [BINARY, "serve", "--model", model, "--port", "0", "--max-sequences", str(sequences),
               "--context-size", str(128 + gen), "--max-queued-requests", str(max(64, requests))] + extra
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        text = open(log.name).read()
        if "model loaded; ready" in text:
            port = int(re.search(r"listening on http://[0-9.]+:([0-9]+)", text).group(1))
            return process, port, log.name
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    sys.exit(f"the server did not start:\n{open(log.name).read()}")


def stream(port, prompt, gen, seed, errors, arrivals):
    """One streaming request; fills `arrivals` with the arrival time of each of its tokens."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
        body = {"prompt": prompt, "max_tokens": gen, "temperature": 0.7, "seed": seed, "stream": True,
                "logprobs": 0, "stream_options": {"include_usage": True}}
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            errors.append(f"status {response.status}: {response.read()[:200]!r}")
            return
        completion_tokens = None
        while line := response.readline():
            if not line.startswith(b"data: {"):
                continue
            now = time.monotonic()
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                arrivals.extend([now] * len((choice.get("logprobs") or {}).get("tokens", [])))
            if chunk.get("usage"):
                completion_tokens = chunk["usage"]["completion_tokens"]
        connection.close()
        # A stop token is counted in the usage but not streamed (the count here leaves it out).
        if completion_tokens not in (len(arrivals), len(arrivals) + 1):
            errors.append(f"usage says {completion_tokens} tokens, {len(arrivals)} arrived")
    except Exception as error:  # reported, and the run fails
        errors.append(repr(error))


def measure(model, sequences, gen, requests, extra, prompts):
    process, port, log = start_server(model, sequences, gen, requests, extra)
    try:
        errors = []
        arrivals = [[] for _ in range(requests)]
        clients = [threading.Thread(target=stream, args=(port, prompts[i % len(prompts)], gen, 1 + i, errors, arrivals[i]))
                   for i in range(requests)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        if errors:
            sys.exit(f"{len(errors)} requests failed: {errors[:3]}")
        if any(not times for times in arrivals):
            sys.exit("a request produced no token")
        if os.environ.get("ARRIVALS"):  # every token's arrival, seconds after the first, one request a line
            with open(os.environ["ARRIVALS"], "a") as dump:
                first = min(times[0] for times in arrivals)
                for times in arrivals:
                    print(" ".join(f"{t - first:.3f}" for t in times), file=dump)
        opened = sorted(times[0] for times in arrivals)[sequences - 1]
        busy_until = sorted(times[-1] for times in arrivals)[requests - sequences]
        every = sorted(t for times in arrivals for t in times)
        whole = sum(1 for t in every if t > opened) / (every[-1] - opened) if every[-1] > opened else None
        # While every slot is busy each step gives N tokens (a slot handed to a waiting request gives
        # that request's first token), so the rate is N ÷ the step's length. A step's tokens reach the
        # clients spread over up to 0.25 s (64 streams), which would blur a count between two instants;
        # a request's own tokens keep their place in that spread, so each running request's mean gap
        # between consecutive tokens is a step's length. The median over the requests is taken.
        gaps = []
        for times in arrivals:
            inside = [t for t in times if opened <= t <= busy_until]
            if len(inside) >= 2:
                gaps.append((inside[-1] - inside[0]) / (len(inside) - 1))
        gaps.sort()
        step_seconds = gaps[len(gaps) // 2] if gaps else None
        return {"sequences": sequences, "requests": requests, "gen_tokens": gen,
                "whole_tokens_per_second": whole,
                "all_busy_tokens_per_second": sequences / step_seconds if step_seconds else None,
                "all_busy_seconds": busy_until - opened, "all_busy_step_seconds": step_seconds,
                "tokens": len(every)}
    finally:
        process.terminate()
        process.wait()
        os.unlink(log)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    model, counts, gen = sys.argv[1], [int(n) for n in sys.argv[2].split(",")], int(sys.argv[3])
    extra = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    per_slot = int(os.environ.get("REQUESTS_PER_SLOT", "1"))
    runs = int(os.environ.get("RUNS", "1"))
    with open(os.path.join(ROOT, "scripts", "prompts", "python.jsonl")) as f:
        prompts = [json.loads(line) for line in f if line.strip()]
    measured = {count: [] for count in counts}
    for run in range(runs):  # round-robin, so drift hits every count alike
        for count in counts:
            # Run r starts at prompt r, so one sequence's runs differ in prompt, as in bench batch.
            result = measure(model, count, gen, count * per_slot, extra, prompts[run:] + prompts[:run])
            result["run"] = run + 1
            print(json.dumps(result), flush=True)
            measured[count].append(result)

    def median(values):
        values = sorted(v for v in values if v)
        return values[len(values) // 2] if values else None
    keys = ["whole_tokens_per_second", "all_busy_tokens_per_second"]
    rows = [{"sequences": count, **{key: median(r[key] for r in measured[count]) for key in keys}} for count in counts]
    base = rows[0]
    print(f"\nmedians of {runs} run(s), {per_slot} request(s) per slot")
    print(f"| sequences | whole window tok/s | × {base['sequences']} | all slots busy tok/s | × {base['sequences']} |")
    print("|---|---|---|---|---|")
    for row in rows:
        cells = [f"{row[key]:.1f} | {row[key] / base[key]:.2f}" if row[key] and base[key] else "- | -" for key in keys]
        print(f"| {row['sequences']} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
