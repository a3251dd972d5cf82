#!/bin/bash
# Requests one after another to a fresh one-slot server: each one's prompt and decode time (session 34).
#
# Starts `moe-serve serve --max-sequences 1` on MODEL, waits until it is ready and its expert buffers are
# warmed, then sends N `/completion` requests in turn, each a different short Python prompt (16 tokens at
# temperature 0.7, seeds 1..N), and prints the server's own prompt_n and decode ms/token for each. The second
# request is the first whose prompt partly matches a cached one (a shared first token), so it is also the one
# that runs the engine's one-off prefill-exactness probe. Extra flags after `--` go to `serve`.
#
#   MOE_DISK_MBPS=1500 scripts/serve_requests_in_turn.sh /dev/shm/olmoe-q4c 6 -- --expert-cache 960MiB --prefetch on
set -euo pipefail
MODEL=${1:?usage: scripts/serve_requests_in_turn.sh MODEL N [-- serve flags]}; N=${2:?}; shift 2
[ "${1:-}" = "--" ] && shift
ROOT=$(cd "$(dirname "$0")/.." && pwd); B=${B:-$ROOT/.build/release/moe-serve}
PORT=${PORT:-8098}
LOG=$(mktemp /tmp/serve-in-turn.XXXXXX)
trap 'pkill -f -- "--port $PORT" 2>/dev/null || true; rm -f "$LOG"' EXIT
"$B" serve --model "$MODEL" --port "$PORT" --max-sequences 1 "$@" > "$LOG" 2>&1 &
for _ in $(seq 600); do grep -q "ready" "$LOG" && break; sleep 0.1; done
for _ in $(seq 100); do grep -q "expert buffers warmed" "$LOG" && break; sleep 0.1; done
PORT=$PORT N=$N python3 - <<'PY'
import json, os, urllib.request
port, n = os.environ["PORT"], int(os.environ["N"])
prompts = ["def fibonacci(n):", "import numpy as np", "class Stack:", "for item in items:", "with open(path) as f:", "while True:"]
for i in range(n):
    body = json.dumps({"prompt": prompts[i % len(prompts)], "n_predict": 16, "temperature": 0.7, "seed": i + 1}).encode()
    t = json.load(urllib.request.urlopen(urllib.request.Request(f"http://localhost:{port}/completion", body)))["timings"]
    print(f"request {i + 1}: prompt_n {t['prompt_n']} prompt_ms {t['prompt_ms']:.0f} decode_ms_per_token {t['predicted_per_token_ms']:.0f}", flush=True)
PY
