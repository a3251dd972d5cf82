#!/usr/bin/env bash
# llama-server and moe-serve side by side on the same weights (issue 22, item 5).
#
#   scripts/bench_vs_llamacpp.sh --gguf MODEL.gguf --store STORE_DIR [--rounds 3] [--fractions "all 75 50 25"]
#                                [--prompt-tokens 128] [--gen-tokens 32] [--threads 2] [--out FILE.json]
#                                [--moe-model PATH]
#
# Both servers warm (one request before the measured one), the same prompt text (both use the
# checkpoint's tokenizer.json), temperature 0, through each server's llama.cpp-style `/completion`, whose
# `timings` give prompt and decode tokens/s (llama-server with `--no-repack` under a limit, see below).
# Settings: all in RAM (no limit; moe-serve with a budget of the store's size + 3 GiB), then a cgroup v1
# memory limit of each fraction of the GGUF file's size, the same limit for both (run_in_cgroup.sh;
# moe-serve gets `--memory-budget` = the limit minus 64 MiB of page-cache slack). Before every limited
# run the model files are dropped from the page cache (posix_fadvise DONTNEED), so mmap cannot read
# pages an earlier run left cached outside the cgroup. Rounds rotate the order (A B, B A, ...);
# medians are printed, and the median of each round's moe-serve / llama-server ratio; every run is in the JSON.
#
# Beside it, the resident bound: bytes a decode step touches (dense weights + top-k experts of every
# layer, from the store's manifest) ÷ the streaming read bandwidth `moe-serve bench kernels` measures.
#
# `--moe-model PATH` serves moe-serve from PATH instead of the store (for example the GGUF file itself,
# read directly); the store still gives the tokenizer for the prompt and the manifest for the bound.
#
# Needs: llama.cpp's llama-server (LLAMA_SERVER, default ~/.cache/moe-serve-llama-cpp/build/bin/llama-server),
# moe-serve (MOE_SERVE, default .build/release/moe-serve), root for the cgroup. Run it under the build
# lock on a shared machine: flock /tmp/moe-build.lock scripts/bench_vs_llamacpp.sh ...
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF="" STORE="" MOE_MODEL="" ROUNDS=3 FRACTIONS="all 75 50 25" PROMPT_TOKENS=128 GEN_TOKENS=32 THREADS=2 OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --gguf) GGUF="$2"; shift 2 ;;
        --store) STORE="$2"; shift 2 ;;
        --moe-model) MOE_MODEL="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --fractions) FRACTIONS="$2"; shift 2 ;;
        --prompt-tokens) PROMPT_TOKENS="$2"; shift 2 ;;
        --gen-tokens) GEN_TOKENS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$GGUF" ] || [ -z "$STORE" ]; then echo "usage: $0 --gguf MODEL.gguf --store STORE_DIR [options]" >&2; exit 2; fi
MOE_MODEL="${MOE_MODEL:-$STORE}"
export GGUF STORE MOE_MODEL ROUNDS FRACTIONS PROMPT_TOKENS GEN_TOKENS THREADS OUT
export LLAMA_SERVER="${LLAMA_SERVER:-$HOME/.cache/moe-serve-llama-cpp/build/bin/llama-server}"
export MOE_SERVE="${MOE_SERVE:-$PWD/.build/release/moe-serve}"
export CGROUP_RUN="$PWD/scripts/llamacpp/run_in_cgroup.sh"
exec python3 - <<'PY'
import json, os, random, signal, socket, statistics, subprocess, sys, time, urllib.request

env = os.environ
gguf, store = env["GGUF"], env["STORE"]
rounds, threads = int(env["ROUNDS"]), int(env["THREADS"])
prompt_tokens, gen_tokens = int(env["PROMPT_TOKENS"]), int(env["GEN_TOKENS"])
model_bytes = os.path.getsize(gguf)
store_bytes = sum(os.path.getsize(os.path.join(store, f)) for f in os.listdir(store))

def log(*a): print(*a, file=sys.stderr, flush=True)

# The prompt: Python source (the synthetic models use the demo model's code tokenizer), cut to
# about `prompt_tokens` tokens with moe-serve's tokenizer (the GGUF carries the same one).
text = open("Tests/Fixtures/perplexity/py_compile.py.txt").read()
ids = json.loads(subprocess.run([env["MOE_SERVE"], "tokenize", "--model", store, "--text", text], check=True, capture_output=True, text=True).stdout)["ids"]
prompt = json.loads(subprocess.run([env["MOE_SERVE"], "detokenize", "--model", store, "--ids", ",".join(map(str, ids[:prompt_tokens]))],
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

def post(port, body, timeout=1800):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r: return json.loads(r.read())

def wait_healthy(port, proc, timeout=600):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None: raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200: return time.time() - start
        except Exception: time.sleep(0.5)
    raise RuntimeError("server did not become healthy")

def run(engine, limit):
    port = free_port()
    if engine == "llama-server":
        cmd = [env["LLAMA_SERVER"], "-m", gguf, "-t", str(threads), "-tb", str(threads), "-c", "2048", "-np", "1",
               "--host", "127.0.0.1", "--port", str(port)]
        # Under a limit: no weight repacking. By default llama.cpp copies Q4_0 weights into an
        # interleaved layout in anonymous memory (the whole model resident), which the OOM killer
        # ends while loading in any cgroup smaller than the model; without it the weights stay
        # mmapped, as llama.cpp users with too little RAM run it.
        if limit: cmd.append("--no-repack")
    else:
        cmd = [env["MOE_SERVE"], "serve", "--model", env["MOE_MODEL"], "--host", "127.0.0.1", "--port", str(port)]
        # All in RAM: a budget that holds the whole store. Without one `serve` plans for its
        # default 4 GiB, which keeps only ~85% of this shape's q4 experts: the "all in RAM" rounds
        # before 2026-12-04 10:30 evicted and re-read experts every token (and ran the predictor).
        cmd += ["--memory-budget", str(limit - (64 << 20) if limit else store_bytes + (3 << 30))]
    if limit:
        drop_page_cache([gguf, store])
        cmd = [env["CGROUP_RUN"], str(limit), "--"] + cmd
    # The server's stderr goes to a file (a pipe nobody reads could fill and stall it); its tail
    # explains a failed run.
    errfile = open(os.path.join(env.get("TMPDIR", "/tmp"), f"bench_vs_llamacpp-{engine}-{port}.log"), "w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errfile, text=True, start_new_session=True)
    try:
        load = wait_healthy(port, proc)
        body = {"prompt": prompt, "n_predict": gen_tokens, "temperature": 0, "cache_prompt": False, "ignore_eos": True}
        post(port, body)                      # warm-up: page cache / expert cache filled as far as the limit allows
        result = post(port, body)
        t = result["timings"]
        return {"engine": engine, "limit": limit, "load_s": round(load, 2), "prompt_n": t.get("prompt_n"), "predicted_n": t.get("predicted_n"),
                "prefill_tps": t["prompt_per_second"], "decode_tps": t["predicted_per_second"]}
    except Exception as error:
        errfile.flush(); errfile.seek(0)
        tail = " | ".join(errfile.read().splitlines()[-3:])
        raise RuntimeError(f"{error}; server stderr: {tail}")
    finally:
        try:
            # Under a limit, stop the server (the wrapper's child) first, so that run_in_cgroup.sh
            # outlives it and prints its `cgroup:` report (a SIGTERM to the whole group lost it).
            try: children = [int(c) for c in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
            except OSError: children = []
            if limit and children:
                for c in children: os.kill(c, signal.SIGTERM)
                try: proc.wait(timeout=60)
                except subprocess.TimeoutExpired: pass
            if proc.poll() is None: os.killpg(proc.pid, signal.SIGTERM)
            try: proc.wait(timeout=30)
            except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()
        except ProcessLookupError:
            proc.wait()  # already gone (crashed or killed by the OOM killer): the error above says why
        errfile.seek(0)
        cgroup_line = [l for l in errfile.read().splitlines() if l.startswith("cgroup:")]
        if cgroup_line: log("   ", cgroup_line[-1])
        errfile.close()

# The resident bound.
manifest = json.load(open(os.path.join(store, "manifest.json")))
config = manifest["config"]
blob = manifest["experts"]["blobs"][0]["rawLength"] if "rawLength" in manifest["experts"]["blobs"][0] else manifest["experts"]["blobs"][0].get("raw_length")
k = config.get("num_experts_per_tok") or manifest.get("model_config", {}).get("experts_per_token", 8)  # a GGUF-packed store keeps it in model_config
moe_layers = len({b["layer"] for b in manifest["experts"]["blobs"]})
dense = manifest["dense"]["fileSize"] if "fileSize" in manifest["dense"] else manifest["dense"]["file_size"]
bytes_per_token = dense + k * moe_layers * blob
kernels = json.loads(subprocess.run([env["MOE_SERVE"], "bench", "kernels", "--rows", "16384"], check=True, capture_output=True, text=True).stdout)
bandwidth = kernels["memory_read_gbps_2_threads"] * 1e9
bound = bandwidth / bytes_per_token
log(f"resident bound: {bytes_per_token / 1e6:.0f} MB per token (dense {dense / 1e6:.0f} MB + {k}x{moe_layers} experts of {blob / 1e6:.2f} MB) "
    f"/ {bandwidth / 1e9:.1f} GB/s = {bound:.1f} tokens/s")

settings = []
for f in env["FRACTIONS"].split():
    settings.append(None if f == "all" else model_bytes * int(f) // 100)
runs = []
for limit in settings:
    label = "all in RAM" if limit is None else f"{limit / 2**20:.0f} MiB ({100 * limit / model_bytes:.0f}% of the GGUF)"
    log(f"== {label}")
    for r in range(rounds):
        order = ["llama-server", "moe-serve"] if r % 2 == 0 else ["moe-serve", "llama-server"]
        for engine in order:
            try:
                row = run(engine, limit)
            except Exception as error:
                row = {"engine": engine, "limit": limit, "error": str(error)}
            row["round"] = r
            runs.append(row)
            log("   ", json.dumps(row))

def median(engine, limit, key):
    values = [x[key] for x in runs if x["engine"] == engine and x["limit"] == limit and key in x]
    return statistics.median(values) if values else None

table = []
print("| setting | llama-server prefill / decode tok/s | moe-serve prefill / decode tok/s | ratio prefill / decode |")
print("|---|---|---|---|")
for limit in settings:
    lp, ld = median("llama-server", limit, "prefill_tps"), median("llama-server", limit, "decode_tps")
    mp, md = median("moe-serve", limit, "prefill_tps"), median("moe-serve", limit, "decode_tps")
    label = "all in RAM" if limit is None else f"{limit / 2**20:.0f} MiB ({100 * limit / model_bytes:.0f}%)"
    fmt = lambda v: "–" if v is None else f"{v:.2f}"
    ratio = lambda a, b: "–" if a is None or b is None or b == 0 else f"**{a / b:.2f}x**"
    print(f"| {label} | {fmt(lp)} / {fmt(ld)} | {fmt(mp)} / {fmt(md)} | {ratio(mp, lp)} / {ratio(md, ld)} |")
    table.append({"limit": limit, "llama_prefill": lp, "llama_decode": ld, "moe_prefill": mp, "moe_decode": md})
# Paired ratios: moe-serve / llama-server within each round (the two ran back to back), then their median;
# steadier than the ratio of medians when the machine's speed drifts between rounds.
paired = []
for limit in settings:
    for key in ("prefill_tps", "decode_tps"):
        ratios = []
        for r in range(rounds):
            a = [x[key] for x in runs if x["engine"] == "moe-serve" and x["limit"] == limit and x["round"] == r and key in x]
            b = [x[key] for x in runs if x["engine"] == "llama-server" and x["limit"] == limit and x["round"] == r and key in x]
            if a and b and b[0]: ratios.append(a[0] / b[0])
        if ratios:
            label = "all in RAM" if limit is None else f"{limit / 2**20:.0f} MiB"
            paired.append({"limit": limit, "key": key, "ratios": ratios, "median": statistics.median(ratios)})
            print(f"paired {key.split('_')[0]} ratio, {label}: median {statistics.median(ratios):.2f}x "
                  f"(moe-serve faster in {sum(x > 1 for x in ratios)} of {len(ratios)} rounds: {' '.join(f'{x:.2f}' for x in ratios)})")
print(f"\nresident bound (decode): {bound:.1f} tok/s = {bandwidth / 1e9:.1f} GB/s / {bytes_per_token / 1e6:.0f} MB per token; "
      f"{rounds} rotating rounds, medians; {threads} threads; model {model_bytes / 2**20:.0f} MiB (GGUF)")
if env.get("OUT"):
    json.dump({"runs": runs, "table": table, "paired": paired, "bound_tps": bound, "bytes_per_token": bytes_per_token, "bandwidth": bandwidth}, open(env["OUT"], "w"), indent=1)
PY
