#!/usr/bin/env python3
"""Throughput mode through the real server: aggregate decode speed of N concurrent streaming clients.

For each N in turn: starts `moe-serve serve --max-sequences N` on MODEL (extra flags after `--`), sends N
streaming `/v1/completions` requests at once (distinct prompts from scripts/prompts/python.jsonl, temperature
0.7, GEN tokens each), and polls llama-server's `GET /slots` every 50 ms for each sequence's `n_decoded`. It
reports two windows, as `bench batch` does:

- whole: from when every sequence has its first token to when the last one ends (tokens after the opening);
- all running: from the same opening to the end of the last step before the first sequence ended (the steps
  that ran all N; a sequence may end early on a stop, which a loaded server would fill with the next request).

One JSON line per N and run (RUNS=R, default 1, round-robin over the Ns), then a table of the medians with
the ratios to the first N (issue 26 item 5, docs/BENCHMARKS.md):

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


def start_server(model, sequences, gen, extra):
    log = tempfile.NamedTemporaryFile(prefix="serve-throughput-", suffix=".log", delete=False)
    command = [BINARY, "serve", "--model", model, "--port", "0", "--max-sequences", str(sequences),
               "--context-size", str(64 + gen), "--max-queued-requests", str(max(64, sequences))] + extra
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        text = open(log.name).read()
        if "model loaded; ready" in text:
            port = int(re.search(r"listening on http://[0-9.]+:([0-9]+)", text).group(1))
            return process, port, log.name
        if process.poll() is not None or "\nerror" in text or text.startswith("error"):
            break
        time.sleep(0.2)
    process.kill()
    sys.exit(f"the server did not start:\n{open(log.name).read()}")


def slots(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/slots")
    body = json.loads(connection.getresponse().read())
    connection.close()
    return body


def stream(port, prompt, gen, seed, errors, finished):
    """One streaming request; appends (end time, completion tokens from the final usage chunk) to `finished`."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        body = {"prompt": prompt, "max_tokens": gen, "temperature": 0.7, "seed": seed, "stream": True,
                "stream_options": {"include_usage": True}}
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            errors.append(f"status {response.status}: {response.read()[:200]!r}")
            return
        tokens = None
        while line := response.readline():
            if line.startswith(b"data: {") and b'"usage"' in line:
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    tokens = usage["completion_tokens"]
        finished.append((time.monotonic(), tokens))
        connection.close()
        if tokens is None:
            errors.append("the stream ended without a usage chunk")
    except Exception as error:  # reported, and the run fails
        errors.append(repr(error))


def measure(model, sequences, gen, extra, prompts):
    process, port, log = start_server(model, sequences, gen, extra)
    try:
        errors, finished = [], []
        clients = [threading.Thread(target=stream, args=(port, prompts[i % len(prompts)], gen, 1 + i, errors, finished))
                   for i in range(sequences)]
        for client in clients:
            client.start()
        samples = []  # (time, running sequences, all decoding with a first token, tokens decoded by them)
        while any(client.is_alive() for client in clients):
            now = time.monotonic()
            state = slots(port)
            decoding = [s for s in state if s["state"] == "decode" and s["n_decoded"] >= 1]
            samples.append((now, len(state), len(decoding), sum(s["n_decoded"] for s in state)))
            time.sleep(0.05)
        for client in clients:
            client.join()
        if os.environ.get("TIMELINE"):  # every poll: seconds, sequences in /slots, decoding, tokens decoded
            for t, running, decoding, tokens in samples:
                print(f"{t - samples[0][0]:7.2f} {running:4d} {decoding:4d} {tokens:6d}", file=sys.stderr)
        if errors:
            sys.exit(f"{len(errors)} requests failed: {errors[:3]}")
        # Polls see a step's tokens at once (the engine delivers them together), so a change in the
        # tokens decoded marks a step's end; both windows start at the end of the first step after which
        # all N decoded, and the all-running one ends at the last step's end before the first sequence
        # left /slots (a stop or its limit), so neither counts a part of a step.
        ends = [i for i in range(1, len(samples)) if samples[i][3] != samples[i - 1][3]]
        opened = next((i for i in ends if samples[i][2] == sequences), None)
        if opened is None:
            sys.exit(f"never saw all {sequences} sequences decoding at once: raise GEN")
        first_drop = next((i for i in range(opened, len(samples)) if samples[i][1] < sequences), len(samples))
        last_full = max([i for i in ends if opened <= i < first_drop], default=opened)
        t0, _, _, tokens0 = samples[opened]
        t1, _, _, tokens1 = samples[last_full]
        all_running = (tokens1 - tokens0) / (t1 - t0) if t1 > t0 else None
        # Whole window: every token after the opening (the requests' own counts), to the last stream's end.
        end = max(t for t, _ in finished)
        total = sum(tokens for _, tokens in finished)
        whole = (total - tokens0) / (end - t0) if end > t0 else None
        return {"sequences": sequences, "gen_tokens": gen, "whole_tokens_per_second": whole,
                "all_running_tokens_per_second": all_running, "all_running_seconds": t1 - t0,
                "all_running_tokens": tokens1 - tokens0, "polls": len(samples)}
    finally:
        process.terminate()
        process.wait()
        os.unlink(log)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    model, counts, gen = sys.argv[1], [int(n) for n in sys.argv[2].split(",")], int(sys.argv[3])
    extra = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    with open(os.path.join(ROOT, "scripts", "prompts", "python.jsonl")) as f:
        prompts = [json.loads(line) for line in f if line.strip()]
    runs = int(os.environ.get("RUNS", "1"))
    measured = {count: [] for count in counts}
    for run in range(runs):  # round-robin, so drift hits every count alike
        for count in counts:
            # Run r gives sequence s prompt r + s, so one sequence's runs differ in prompt, as in bench batch.
            result = measure(model, count, gen, extra, prompts[run:] + prompts[:run])
            result["run"] = run + 1
            print(json.dumps(result), flush=True)
            measured[count].append(result)

    def median(values):
        values = sorted(v for v in values if v)
        return values[len(values) // 2] if values else None
    results = [{"sequences": count,
                "whole_tokens_per_second": median(r["whole_tokens_per_second"] for r in measured[count]),
                "all_running_tokens_per_second": median(r["all_running_tokens_per_second"] for r in measured[count])}
               for count in counts]
    base = results[0]
    print(f"\nmedians of {runs} run(s)")
    print(f"\n| sequences | whole window tok/s | × {base['sequences']} | all running tok/s | × {base['sequences']} |")
    print("|---|---|---|---|---|")
    for r in results:
        ratio = lambda key: f"{r[key] / base[key]:.2f}" if r[key] and base[key] else "-"
        speed = lambda key: f"{r[key]:.1f}" if r[key] else "-"
        print(f"| {r['sequences']} | {speed('whole_tokens_per_second')} | {ratio('whole_tokens_per_second')} "
              f"| {speed('all_running_tokens_per_second')} | {ratio('all_running_tokens_per_second')} |")


if __name__ == "__main__":
    main()
