#!/usr/bin/env bash
# Two moe-serve variants side by side through `serve` and `/completion`, warm, all in RAM: rounds
# alternate the order (A B, B A, ...); each run starts a server, sends one warm-up and one measured
# request (the same prompt, temperature 0, ignore_eos), and reads the server's own `timings`.
# Medians and the paired ratio B/A are printed. A variant is "ENV=VALUE ... BINARY" (env words
# first), e.g. to time a kernel switch against the default:
#
#   flock /tmp/moe-build.lock scripts/ab_serve.sh --store /work/bench-kernels/olmoe-q4 \
#       --a "MOE_Q4_KERNEL=tile .build/release/moe-serve" --b ".build/release/moe-serve" --rounds 4
#
# Options: --prompt-tokens 128 --gen-tokens 32 --budget BYTES (default: the store's size + 3 GiB),
# --model PATH (served instead of the store, e.g. a GGUF file read directly; the store still gives
# the prompt's tokenizer).
set -euo pipefail
cd "$(dirname "$0")/.."
STORE="" MODEL="" A="" B="" ROUNDS=4 PROMPT_TOKENS=128 GEN_TOKENS=32 BUDGET=""
while [ $# -gt 0 ]; do
    case "$1" in
        --store) STORE="$2"; shift 2 ;;
        --model) MODEL="$2"; shift 2 ;;
        --a) A="$2"; shift 2 ;;
        --b) B="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --prompt-tokens) PROMPT_TOKENS="$2"; shift 2 ;;
        --gen-tokens) GEN_TOKENS="$2"; shift 2 ;;
        --budget) BUDGET="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$STORE" ] || [ -z "$A" ] || [ -z "$B" ]; then echo "usage: $0 --store STORE --a VARIANT --b VARIANT [options]" >&2; exit 2; fi
export STORE MODEL A B ROUNDS PROMPT_TOKENS GEN_TOKENS BUDGET
exec python3 - <<'PY'
import json, os, signal, socket, statistics, subprocess, sys, time, urllib.request
env = os.environ
store = env["STORE"]
def variant(spec):
    words = spec.split()
    extra = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("/") and not w.startswith("."))
    return extra, [w for w in words if w.split("=", 1)[0] not in extra]
variants = {"A": variant(env["A"]), "B": variant(env["B"])}
binary = variants["B"][1][0]
store_bytes = sum(os.path.getsize(os.path.join(store, f)) for f in os.listdir(store))
budget = env["BUDGET"] or str(store_bytes + (3 << 30))
text = open("Tests/Fixtures/perplexity/py_compile.py.txt").read()
ids = json.loads(subprocess.run([binary, "tokenize", "--model", store, "--text", text], check=True, capture_output=True, text=True).stdout)["ids"]
prompt = json.loads(subprocess.run([binary, "detokenize", "--model", store, "--ids", ",".join(map(str, ids[:int(env["PROMPT_TOKENS"])]))],
                                   check=True, capture_output=True, text=True).stdout)["text"]
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=1800) as r: return json.loads(r.read())
def run(name):
    extra, cmd = variants[name]
    port = free_port()
    proc = subprocess.Popen(cmd + ["serve", "--model", env["MODEL"] or store, "--memory-budget", budget, "--host", "127.0.0.1", "--port", str(port)],
                            env={**env, **extra}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(1200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200: break
            except Exception: time.sleep(0.25)
        body = {"prompt": prompt, "n_predict": int(env["GEN_TOKENS"]), "temperature": 0, "cache_prompt": False, "ignore_eos": True}
        post(port, body)
        t = post(port, body)["timings"]
        return t["prompt_per_second"], t["predicted_per_second"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM); proc.wait()
rows = []
for r in range(int(env["ROUNDS"])):
    for name in (["A", "B"] if r % 2 == 0 else ["B", "A"]):
        p, d = run(name)
        rows.append((r, name, p, d))
        print(f"round {r} {name}: prefill {p:.1f} decode {d:.1f} tok/s", file=sys.stderr, flush=True)
for col, label in ((2, "prefill"), (3, "decode")):
    a = [x[col] for x in rows if x[1] == "A"]; b = [x[col] for x in rows if x[1] == "B"]
    ratios = [y / x for x, y in zip(a, b)]
    print(f"{label}: A median {statistics.median(a):.1f} tok/s, B median {statistics.median(b):.1f} tok/s, "
          f"paired B/A median {statistics.median(ratios):.3f} (B faster in {sum(q > 1 for q in ratios)} of {len(ratios)})")
PY
