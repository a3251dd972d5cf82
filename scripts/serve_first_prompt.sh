#!/bin/bash
# A fresh server's first prompt, with and without warming the expert buffers (session 33).
#
# Each round starts `moe-serve serve` on MODEL twice, once with MOE_WARM_BUFFERS=on (the default) and once with
# =off, the order alternating between rounds. After "ready" it waits for the warming line (or WAIT seconds
# with warming off), sends one `/completion` (PROMPT, 16 tokens at temperature 0.7) and prints the server's own
# prompt_ms and decode ms/token; then stops the server and idles IDLE seconds, long enough for a virtual
# machine's balloon to take back the freed memory (on this machine ~30 s), so that every round starts as cold
# as a freshly booted server. Extra flags after `--` go to `serve`.
#
#   MOE_DISK_MBPS=1500 scripts/serve_first_prompt.sh /dev/shm/olmoe-q4d 3 -- --expert-cache 960MiB --prefetch on
set -euo pipefail
MODEL=${1:?usage: scripts/serve_first_prompt.sh MODEL ROUNDS [-- serve flags]}; ROUNDS=${2:?}; shift 2
[ "${1:-}" = "--" ] && shift
ROOT=$(cd "$(dirname "$0")/.." && pwd); B=${B:-$ROOT/.build/release/moe-serve}
PORT=${PORT:-8097}; IDLE=${IDLE:-40}; WAIT=${WAIT:-3}; PROMPT=${PROMPT:-def fibonacci(n):}
LOG=$(mktemp /tmp/serve-first-prompt.XXXXXX)
trap 'pkill -f -- "--port $PORT" 2>/dev/null || true; rm -f "$LOG"' EXIT
one() {
  local warm=$1; shift
  MOE_WARM_BUFFERS=$warm "$B" serve --model "$MODEL" --port "$PORT" --max-sequences 1 "$@" > "$LOG" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do grep -q "ready" "$LOG" && break; sleep 0.1; done
  if [ "$warm" = on ]; then
    for _ in $(seq 600); do grep -q "expert buffers warmed" "$LOG" && break; sleep 0.1; done
  else
    sleep "$WAIT"
  fi
  local timings
  timings=$(curl -s "localhost:$PORT/completion" -d "{\"prompt\": \"$PROMPT\", \"n_predict\": 16, \"temperature\": 0.7, \"seed\": 1}" \
    | python3 -c 'import json, sys; t = json.load(sys.stdin)["timings"]; print("prompt_n %d prompt_ms %.0f decode_ms_per_token %.0f" % (t["prompt_n"], t["prompt_ms"], t["predicted_per_token_ms"]))')
  echo "warm=$warm $timings | $(grep "expert buffers warmed" "$LOG" || echo "no warming")"
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  sleep "$IDLE"
}
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="off on"; else order="on off"; fi
  for w in $order; do one "$w" "$@"; done
done
