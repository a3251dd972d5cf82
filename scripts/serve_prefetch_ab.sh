#!/usr/bin/env bash
# The server's prefetch modes side by side under load: for each MODE in turn, `moe-serve --prefetch MODE` on MODEL
# with EXPERT_CACHE of experts (its reads throttled to MBPS by scripts/run_throttled.sh when MBPS is not 0; root),
# CLIENTS clients of scripts/serve_prefetch_load.py for LOAD_SECONDS, one JSON line per mode. Pass the modes in both
# orders to pair them (docs/PREDICTOR.md, session 28):
#
#   MBPS=600 scripts/serve_prefetch_ab.sh /work/bench/w2048 auto on off
#   MBPS=600 scripts/serve_prefetch_ab.sh /work/bench/w2048 off on auto
#
# Environment: MBPS (default 600), EXPERT_CACHE (60MiB), CLIENTS (2), LOAD_SECONDS (90), PORT (8095).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1; shift
MBPS=${MBPS:-600} EXPERT_CACHE=${EXPERT_CACHE:-60MiB} CLIENTS=${CLIENTS:-2} LOAD_SECONDS=${LOAD_SECONDS:-90} PORT=${PORT:-8095}
for mode in "$@"; do
  command=(.build/release/moe-serve --model "$MODEL" --expert-cache "$EXPERT_CACHE" --port "$PORT" --prefetch "$mode")
  if [ "$MBPS" != 0 ]; then command=(scripts/run_throttled.sh "$MBPS" "$MODEL" -- "${command[@]}"); fi
  "${command[@]}" > "/tmp/serve-prefetch-$mode.log" 2>&1 &
  server=$!
  for _ in $(seq 1 120); do curl -sf "localhost:$PORT/health" > /dev/null && break; sleep 1; done
  echo "$mode $(python3 scripts/serve_prefetch_load.py "$PORT" "$LOAD_SECONDS" "$CLIENTS")"
  pkill -f -- "--port $PORT --prefetch $mode" || true
  wait "$server" 2>/dev/null || true
done
