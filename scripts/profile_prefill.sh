#!/usr/bin/env bash
# Prefill of a warm server, timed and (optionally) profiled: starts `moe-serve serve --model MODEL`, sends a
# Python-source prompt (Tests/Fixtures/perplexity, cut to CHARS characters; 1100 give 261 tokens of the demo
# tokenizer) twice to warm the expert cache, then REPS measured requests (n_predict 1, cache_prompt false),
# printing each one's prompt ms/token from `/completion`'s timings and the expert-cache counters around them.
# With PERF=1, `perf record -g` runs around the measured requests and the top symbols go to OUT/report.txt.
#
#   MODEL=/path/to/gpt-oss-20b-synth BUDGET=15GiB EXTRA="--context-size 2048 --max-sequences 1" REPS=3 \
#       flock /tmp/moe-build.lock scripts/profile_prefill.sh
#
# The budget must hold every expert (check the printed misses: they must not grow between the counters), else
# this times the cache thrashing, not the kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.build/release/moe-serve}
MODEL=${MODEL:?set MODEL to a model directory, store or GGUF}
OUT=${OUT:-$(mktemp -d)}
CHARS=${CHARS:-1100}
PORT=${PORT:-18181}
mkdir -p "$OUT"
$BIN serve --model "$MODEL" --memory-budget "${BUDGET:-16GiB}" --port $PORT ${EXTRA:-} > "$OUT/server.log" 2>&1 &
PID=$!
PERF_PID=
trap '[ -n "$PERF_PID" ] && kill -INT $PERF_PID 2>/dev/null; kill $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
for _ in $(seq 1 900); do curl -sf localhost:$PORT/health >/dev/null && break; sleep 1; done
python3 - "$CHARS" > "$OUT/req.json" <<'PY'
import json, sys
text = open('Tests/Fixtures/perplexity/py_compile.py.txt').read()[:int(sys.argv[1])]
print(json.dumps({"prompt": text, "n_predict": 1, "temperature": 0, "cache_prompt": False}))
PY
timing() { python3 -c 'import json,sys; t=json.load(sys.stdin)["timings"]; print(sys.argv[1], t["prompt_n"], "tokens", round(t["prompt_per_token_ms"],2), "ms/token", round(t["prompt_per_second"],2), "tok/s")' "$1"; }
counters() { curl -s localhost:$PORT/metrics | grep -E '^moe_(expert_cache_(hits|misses)_total|expert_cache_bytes_budget|disk_read_bytes_total)'; }
for _ in 1 2; do curl -s localhost:$PORT/completion -d @"$OUT/req.json" | timing warm; done
counters > "$OUT/before.txt"
if [ "${PERF:-0}" = 1 ]; then
  perf record -F 999 -g -p $PID -o "$OUT/perf.data" 2>/dev/null &
  PERF_PID=$!
  sleep 1
fi
for _ in $(seq 1 "${REPS:-1}"); do curl -s localhost:$PORT/completion -d @"$OUT/req.json" | timing measured; done
counters > "$OUT/after.txt"
paste "$OUT/before.txt" "$OUT/after.txt"
if [ -n "$PERF_PID" ]; then
  kill -INT $PERF_PID; wait $PERF_PID 2>/dev/null || true; PERF_PID=
  perf report -i "$OUT/perf.data" --no-children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -25 > "$OUT/report.txt" || true
  cat "$OUT/report.txt"
fi
