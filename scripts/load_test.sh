#!/usr/bin/env bash
# A 60-second load at 16 connections against the real server on the demo model, under a memory
# budget: prints wrk's summary, the responses by status from /metrics, and the server's peak
# resident set against its budget.
#   scripts/load_test.sh [SECONDS] [CONNECTIONS] [BUDGET]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"; connections="${2:-16}"; budget="${3:-80MiB}"
bin=.build/release/moe-serve
[ -x "$bin" ] || swift build -c release --product moe-serve >&2
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 1; }
log=$(mktemp)
"$bin" serve --port 0 --memory-budget "$budget" 2>"$log" &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log" "$lua"' EXIT
# Port 0: the server picks a free port and names it; wait for "model loaded; ready" (plain "ready"
# also matches "address already in use").
for _ in $(seq 100); do grep -q -e "model loaded; ready" -e "^error" "$log" && break; sleep 0.2; done
grep -q "model loaded; ready" "$log" || { echo "server did not start:" >&2; cat "$log" >&2; exit 1; }
port=$(grep -o "listening on http://127.0.0.1:[0-9]*" "$log" | head -1 | sed 's/.*://')
lua=$(mktemp --suffix .lua)
cat >"$lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"prompt": "def fibonacci(n):", "n_predict": 16, "temperature": 0.7}'
LUA
wrk -t 2 -c "$connections" -d "${seconds}s" --latency -s "$lua" "http://127.0.0.1:$port/completion"
echo "responses by route and status:"
curl -s "http://127.0.0.1:$port/metrics" | grep '^moe_http_requests_total' || true
budget_bytes=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^moe_memory_budget_bytes/ {print $2}')
peak_kb=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
echo "server peak RSS: $((peak_kb / 1024)) MiB; budget: ${budget}"
