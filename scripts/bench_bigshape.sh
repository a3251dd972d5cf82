#!/usr/bin/env bash
# moe-serve and llama.cpp side by side on a big synthetic shape (issue 23 item 5, issue 20 item 5):
# `moe-serve bench decode` on the checkpoint directory (or store) against `llama-bench` on a GGUF of the
# same weights, at budgets that are fractions of the GGUF's size.
#
#   flock /tmp/moe-build.lock scripts/bench_bigshape.sh --model HF_DIR_OR_STORE --gguf MODEL.gguf \
#       [--fractions "100 25"] [--rounds 3] [--prompt-tokens 128] [--gen-tokens 32] [--threads 2] [--out FILE.json]
#
# Per setting and round (the order of the two engines rotates each round), one process each:
#   moe-serve bench decode --model M --memory-budget B --prompt-tokens P --gen-tokens N --runs 1
#   llama-bench -m G -p P -n N -t T -r 1 -o json           (its own warm-up run first)
# 100: no cgroup; moe-serve's budget is the GGUF's size. Below 100: both inside the same cgroup v1 memory
# limit of that fraction of the GGUF's size (scripts/llamacpp/run_in_cgroup.sh), moe-serve's budget the
# limit minus 64 MiB, llama-bench with `--repack 0` (weights stay mmapped, as llama-server `--no-repack`),
# and the model files dropped from the page cache before each run. Prompts are random token ids of the
# same length in both (llama-bench's and moe-serve's own); random weights route alike whatever the text.
# Medians over rounds are printed with `uptime` load before and after; every run is in --out.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="" GGUF="" ROUNDS=3 FRACTIONS="100 25" PROMPT_TOKENS=128 GEN_TOKENS=32 THREADS=2 OUT=""
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
export LLAMA_BENCH="${LLAMA_BENCH:-$HOME/.cache/moe-serve-llama-cpp/build/bin/llama-bench}"
export MOE_SERVE="${MOE_SERVE:-$PWD/.build/release/moe-serve}"
export CGROUP_RUN="$PWD/scripts/llamacpp/run_in_cgroup.sh"
exec python3 - <<'PY'
import json, os, statistics, subprocess, sys, time

env = os.environ
model, gguf = env["MODEL"], env["GGUF"]
rounds, threads = int(env["ROUNDS"]), int(env["THREADS"])
pp, tg = int(env["PROMPT_TOKENS"]), int(env["GEN_TOKENS"])
gguf_bytes = os.path.getsize(gguf)

def log(*a): print(*a, file=sys.stderr, flush=True)
def uptime(): return open("/proc/loadavg").read().split()[:3]

def drop_page_cache(paths):
    for path in paths:
        for root, _, files in (os.walk(path) if os.path.isdir(path) else [(os.path.dirname(path), None, [os.path.basename(path)])]):
            for f in files:
                fd = os.open(os.path.join(root, f), os.O_RDONLY)
                try: os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally: os.close(fd)

def run(engine, fraction):
    limit = gguf_bytes * fraction // 100
    if engine == "llama.cpp":
        cmd = [env["LLAMA_BENCH"], "-m", gguf, "-p", str(pp), "-n", str(tg), "-t", str(threads), "-r", "1", "-o", "json"]
        if fraction < 100: cmd += ["--repack", "0"]
    else:
        budget = limit if fraction >= 100 else limit - (64 << 20)
        cmd = [env["MOE_SERVE"], "bench", "decode", "--model", model, "--memory-budget", str(budget),
               "--prompt-tokens", str(pp), "--gen-tokens", str(tg), "--runs", "1"]
    if fraction < 100:
        drop_page_cache([gguf, model])
        cmd = [env["CGROUP_RUN"], str(limit), "--"] + cmd
    start = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - start
    cgroup = [l for l in p.stderr.splitlines() if l.startswith("cgroup:")]
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: " + " | ".join(p.stderr.splitlines()[-4:]), "cgroup": cgroup[-1:] }
    out = json.loads(p.stdout[p.stdout.index("[") if engine == "llama.cpp" else p.stdout.index("{"):])
    if engine == "llama.cpp":
        rows = {("pp" if r["n_prompt"] > 0 else "tg"): r for r in out}
        row = {"prefill_tps": rows["pp"]["avg_ts"], "decode_tps": rows["tg"]["avg_ts"]}
    else:
        s = out["configurations"][0] if "configurations" in out else out["summaries"][0] if "summaries" in out else out
        row = {"prefill_tps": s["prefill_tokens_per_second"], "decode_tps": s["decode_tokens_per_second"],
               "hit_rate": s.get("hit_rate"), "bytes_read_per_token": s.get("bytes_read_per_token"),
               "stall_fraction": s.get("stall_fraction"), "peak_resident_bytes": s.get("peak_resident_bytes")}
    row.update({"wall_s": round(wall, 1), "cgroup": cgroup[-1] if cgroup else None})
    return row

runs = []
log(f"GGUF {gguf_bytes / 1e9:.2f} GB; load before: {uptime()}")
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
print(f"| budget | llama.cpp pp{pp} / tg{tg} tok/s | moe-serve pp{pp} / tg{tg} tok/s | moe-serve hit rate | decode ratio |")
print("|---|---|---|---|---|")
for fraction in [int(f) for f in env["FRACTIONS"].split()]:
    lp, ld = med("llama.cpp", fraction, "prefill_tps"), med("llama.cpp", fraction, "decode_tps")
    mp, md = med("moe-serve", fraction, "prefill_tps"), med("moe-serve", fraction, "decode_tps")
    h = med("moe-serve", fraction, "hit_rate")
    ratio = "–" if not (ld and md) else f"**{md[0] / ld[0]:.2f}x**"
    label = f"{fraction}% ({gguf_bytes * fraction // 100 / 2**20:.0f} MiB)"
    print(f"| {label} | {fmt(lp)} / {fmt(ld)} | {fmt(mp)} / {fmt(md)} | {'–' if h is None else f'{h[0]:.2f}'} | {ratio} |")
print(f"\nmedians (min-max) of {rounds} rotating rounds, {threads} threads; load after: {uptime()}")
if env.get("OUT"):
    json.dump({"runs": runs, "gguf_bytes": gguf_bytes}, open(env["OUT"], "w"), indent=1)
PY
