#!/usr/bin/env bash
# llama-server and moe-serve side by side on a big synthetic shape (issue 23 item 5, issue 20 item 5):
# `moe-serve serve` on the checkpoint directory (or store) against `llama-server` on a GGUF of the same
# weights, at memory limits that are fractions of the GGUF's size.
#
#   flock /tmp/moe-build.lock scripts/bench_bigshape.sh --model HF_DIR_OR_STORE --gguf MODEL.gguf \
#       [--fractions "100 25"] [--rounds 3] [--prompt-tokens 16] [--gen-tokens 8] [--threads 2] [--out FILE.json]
#
# Per setting and round (the order of the two engines rotates each round), one server process each:
#   llama-server -m G -t T -tb T -c 2048 -np 1                       (under a limit: --no-repack)
#   moe-serve serve --model M --memory-budget B --context-size 2048 --max-sequences 1
# Both warm: one request, then the measured request with the same body (same prompt text, temperature 0,
# n_predict N, ignore_eos, cache_prompt false) through each server's llama.cpp-style `/completion`, whose
# `timings` give prompt and decode tokens/s; moe-serve's `/metrics` expert-cache counters before and after
# the measured request give its hit rate and bytes read per decoded token. The prompt is Python source
# (Tests/Fixtures/perplexity) cut to P tokens of the checkpoint's tokenizer, which the GGUF carries too.
# 100: no cgroup; moe-serve's budget is the GGUF's size + 1 GiB (its budget counts process, KV and scratch). Below 100: both inside the same cgroup v1 memory
# limit of that fraction of the GGUF's size (scripts/llamacpp/run_in_cgroup.sh), moe-serve's budget the
# limit minus 64 MiB, llama-server with `--no-repack` (weights stay mmapped), and the model files dropped
# from the page cache before each run. Medians (min-max) over rounds, ratios from the same run, `uptime`
# load per run in --out. With --fractions 100 only, no cgroup is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="" GGUF="" ROUNDS=3 FRACTIONS="100 25" PROMPT_TOKENS=16 GEN_TOKENS=8 THREADS=2 OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODEL="$2"; shift 2 ;;
        --gguf) GGUF="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --fractions) FRACTIONS="$2"; shift 2 ;;
        --prompt-tokens) PROMPT_TOKENS="$2"; shift 2 ;;
        --gen-tokens) GEN_TOKENS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$MODEL" ] || [ -z "$GGUF" ]; then echo "usage: $0 --model DIR --gguf MODEL.gguf [options]" >&2; exit 2; fi
export MODEL GGUF ROUNDS FRACTIONS PROMPT_TOKENS GEN_TOKENS THREADS OUT
export LLAMA_SERVER="${LLAMA_SERVER:-$HOME/.cache/moe-serve-llama-cpp/build/bin/llama-server}"
export MOE_SERVE="${MOE_SERVE:-$PWD/.build/release/moe-serve}"
export CGROUP_RUN="$PWD/scripts/llamacpp/run_in_cgroup.sh"
exec python3 - <<'PY'
import json, os, re, signal, socket, statistics, subprocess, sys, time, urllib.request

env = os.environ
model, gguf = env["MODEL"], env["GGUF"]
rounds, threads = int(env["ROUNDS"]), int(env["THREADS"])
pp, tg = int(env["PROMPT_TOKENS"]), int(env["GEN_TOKENS"])
gguf_bytes = os.path.getsize(gguf)

def log(*a): print(*a, file=sys.stderr, flush=True)
def uptime(): return open("/proc/loadavg").read().split()[:3]

text = open("Tests/Fixtures/perplexity/py_compile.py.txt").read()
ids = json.loads(subprocess.run([env["MOE_SERVE"], "tokenize", "--model", model, "--text", text], check=True, capture_output=True, text=True).stdout)["ids"]
prompt = json.loads(subprocess.run([env["MOE_SERVE"], "detokenize", "--model", model, "--ids", ",".join(map(str, ids[:pp]))],
                                   check=True, capture_output=True, text=True).stdout)["text"]

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def drop_page_cache(paths):
    for path in paths:
        for root, _, files in (os.walk(path) if os.path.isdir(path) else [(os.path.dirname(path), None, [os.path.basename(path)])]):
            for f in files:
                fd = os.open(os.path.join(root, f), os.O_RDONLY)
                try: os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally: os.close(fd)

def get(port, path, timeout=30):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r: return r.read().decode()

def post(port, body, timeout=3600):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r: return json.loads(r.read())

def wait_healthy(port, proc, timeout=900):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None: raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            get(port, "/health", timeout=5); return time.time() - start
        except Exception: time.sleep(0.5)
    raise RuntimeError("server did not become healthy")

def counters(port):
    """moe-serve's expert-cache counters (Prometheus text): name -> summed value."""
    out = {}
    for line in get(port, "/metrics").splitlines():
        m = re.match(r"^(moe_expert_cache_hits_total|moe_expert_cache_misses_total|moe_disk_read_bytes_total|moe_io_stall_seconds_total)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
        if m: out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
    return out

def run(engine, fraction):
    limit = gguf_bytes * fraction // 100
    port = free_port()
    if engine == "llama.cpp":
        cmd = [env["LLAMA_SERVER"], "-m", gguf, "-t", str(threads), "-tb", str(threads), "-c", "2048", "-np", "1",
               "--host", "127.0.0.1", "--port", str(port)]
        if fraction < 100: cmd.append("--no-repack")
    else:
        # At 100% llama-server has no limit: besides the weights it holds its process, KV and compute
        # buffers. moe-serve's budget counts all of those too (a budget of just the model's size leaves
        # less than gpt-oss-20b's experts need), so it gets the model's size plus 1 GiB.
        budget = limit + (1 << 30) if fraction >= 100 else limit - (64 << 20)
        # The same context and slots as llama-server's -c 2048 -np 1: moe-serve's plan reserves KV for
        # its context × sequences (by default the model's trained context × 8), which at gpt-oss-20b's
        # 131,072 positions took a quarter of the budget from the expert cache (session 12).
        cmd = [env["MOE_SERVE"], "serve", "--model", model, "--memory-budget", str(budget), "--host", "127.0.0.1", "--port", str(port),
               "--context-size", "2048", "--max-sequences", "1"]
    if fraction < 100:
        drop_page_cache([gguf, model])
        cmd = [env["CGROUP_RUN"], str(limit), "--"] + cmd
    errfile = open(os.path.join(env.get("TMPDIR", "/tmp"), f"bench_bigshape-{engine}-{port}.log"), "w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errfile, text=True, start_new_session=True)
    row = {}
    try:
        row["load_s"] = round(wait_healthy(port, proc), 1)
        body = {"prompt": prompt, "n_predict": tg, "temperature": 0, "cache_prompt": False, "ignore_eos": True}
        start = time.time(); post(port, body); row["warmup_s"] = round(time.time() - start, 1)
        before = counters(port) if engine == "moe-serve" else {}
        start = time.time(); result = post(port, body); row["request_s"] = round(time.time() - start, 1)
        t = result["timings"]
        row.update({"prompt_n": t.get("prompt_n"), "predicted_n": t.get("predicted_n"),
                    "prefill_tps": t["prompt_per_second"], "decode_tps": t["predicted_per_second"],
                    "text": result.get("content", "")[:60]})
        if engine == "moe-serve":
            after = counters(port)
            delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            row["cache_counters"] = delta
            uses = delta.get("moe_expert_cache_hits_total", 0) + delta.get("moe_expert_cache_misses_total", 0)
            if uses: row["hit_rate"] = round(delta.get("moe_expert_cache_hits_total", 0) / uses, 3)
            row["read_mb_per_request"] = round(delta.get("moe_disk_read_bytes_total", 0) / 1e6, 1)
    except Exception as error:
        errfile.flush(); errfile.seek(0)
        row["error"] = f"{error}; server stderr: " + " | ".join(errfile.read().splitlines()[-3:])
    finally:
        try:
            # Under a limit, stop the server (the wrapper's child) first, so that run_in_cgroup.sh
            # outlives it and prints its `cgroup:` report (a SIGTERM to the whole group lost it).
            try: children = [int(c) for c in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
            except OSError: children = []
            if fraction < 100 and children:
                for c in children: os.kill(c, signal.SIGTERM)
                try: proc.wait(timeout=60)
                except subprocess.TimeoutExpired: pass
            if proc.poll() is None: os.killpg(proc.pid, signal.SIGTERM)
            try: proc.wait(timeout=60)
            except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()
        except ProcessLookupError:
            proc.wait()
        errfile.seek(0)
        cgroup = [l for l in errfile.read().splitlines() if l.startswith("cgroup:")]
        row["cgroup"] = cgroup[-1] if cgroup else None
        errfile.close()
    return row

runs = []
log(f"GGUF {gguf_bytes / 1e9:.2f} GB; prompt {pp} tokens: {prompt[:60]!r}...; load before: {uptime()}")
for fraction in [int(f) for f in env["FRACTIONS"].split()]:
    for r in range(rounds):
        for engine in (["llama.cpp", "moe-serve"] if r % 2 == 0 else ["moe-serve", "llama.cpp"]):
            load = uptime()
            row = run(engine, fraction)
            row.update({"engine": engine, "fraction": fraction, "round": r, "load_before": load})
            runs.append(row)
            log("   ", json.dumps(row))

def med(engine, fraction, key):
    v = [x[key] for x in runs if x["engine"] == engine and x["fraction"] == fraction and x.get(key) is not None]
    return (statistics.median(v), min(v), max(v)) if v else None
fmt = lambda m: "–" if m is None else f"{m[0]:.2f} ({m[1]:.2f}-{m[2]:.2f})"
print(f"| budget | llama-server pp{pp} / tg{tg} tok/s | moe-serve pp{pp} / tg{tg} tok/s | moe-serve hit rate | prefill ratio | decode ratio |")
print("|---|---|---|---|---|---|")
for fraction in [int(f) for f in env["FRACTIONS"].split()]:
    lp, ld = med("llama.cpp", fraction, "prefill_tps"), med("llama.cpp", fraction, "decode_tps")
    mp, md = med("moe-serve", fraction, "prefill_tps"), med("moe-serve", fraction, "decode_tps")
    ratio = lambda a, b: "–" if not (a and b) else f"**{a[0] / b[0]:.2f}x**"
    h = med("moe-serve", fraction, "hit_rate")
    label = f"{fraction}% ({gguf_bytes * fraction // 100 / 2**20:.0f} MiB)"
    print(f"| {label} | {fmt(lp)} / {fmt(ld)} | {fmt(mp)} / {fmt(md)} | {'–' if h is None else f'{h[0]:.2f}'} | {ratio(mp, lp)} | {ratio(md, ld)} |")
print(f"\nmedians (min-max) of {rounds} rotating rounds, {threads} threads, both servers warm; ratio = moe-serve / llama-server; load after: {uptime()}")
if env.get("OUT"):
    json.dump({"runs": runs, "gguf_bytes": gguf_bytes, "prompt": prompt}, open(env["OUT"], "w"), indent=1)
PY
