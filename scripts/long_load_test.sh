#!/usr/bin/env bash
# Long load under a memory limit (issue 19, item 6): the real server on the demo model inside a
# cgroup v1 memory limit of budget + 5%, driven by scripts/load_client.py for MINUTES with
# CONNECTIONS clients (streaming and non-streaming chat and completions, 15% of requests cut off
# by their client mid-stream or right after sending). Reports and checks:
#   - OOM kills in the cgroup (must be 0) and the server still running;
#   - 5xx answers other than 503 with Retry-After (must be 0);
#   - leaks: once the load stops, running sequences, queued requests, generation requests in
#     flight, KV reservations, expert pins and held request bytes must all return to 0;
#   - p50/p99 latency of completed requests, peak RSS (VmHWM) and the cgroup's peak usage.
# Exit status 0 only when every check passes.
#   scripts/long_load_test.sh [MINUTES] [CONNECTIONS] [BUDGET]     (default 10 64 96MiB)
# Needs a writable /sys/fs/cgroup/memory (cgroup v1; run as root) for the limit; without one it
# runs without the limit and says so. Run it alone on the machine: it loads every core.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"; connections="${2:-64}"; budget="${3:-96MiB}"
bin=.build/release/moe-serve
[ -x "$bin" ] || swift build -c release --product moe-serve >&2
seconds=$(python3 -c "print(int(float('$minutes') * 60))")
budget_bytes=$(python3 -c "
import re; m = re.fullmatch(r'([0-9.]+)\s*([KMGT]?)(i?B)?', '$budget'.strip(), re.I)
print(int(float(m.group(1)) * 1024 ** ' KMGT'.index((m.group(2) or ' ').upper())))")
limit_bytes=$((budget_bytes * 105 / 100))
log=$(mktemp)
group=""
root=/sys/fs/cgroup/memory
if [ -w "$root" ] && mkdir "$root/moe-load-$$" 2>/dev/null; then
  group="$root/moe-load-$$"
  echo "$limit_bytes" > "$group/memory.limit_in_bytes"
  # The server joins the group before exec, so everything it allocates is charged there.
  sh -c "echo \$\$ > $group/cgroup.procs && exec $bin serve --port 0 --memory-budget $budget" 2>"$log" &
else
  echo "note: $root is not writable; running without a cgroup limit" >&2
  "$bin" serve --port 0 --memory-budget "$budget" 2>"$log" &
fi
pid=$!
cleanup() {
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ -n "$group" ] && rmdir "$group" 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT
# Port 0: the server picks a free port and names it ("listening on http://127.0.0.1:PORT"); a
# random fixed port collided with other tests' servers. "model loaded; ready", not "ready", which
# "address already in use" also contains.
for _ in $(seq 300); do grep -q -e "model loaded; ready" -e "^error" "$log" && break; sleep 0.2; done
grep -q "model loaded; ready" "$log" || { echo "server did not start:" >&2; cat "$log" >&2; exit 1; }
port=$(grep -o "listening on http://127.0.0.1:[0-9]*" "$log" | head -1 | sed 's/.*://')

echo "load: ${minutes} min x ${connections} connections, budget ${budget} (${budget_bytes} bytes), cgroup limit: $([ -n "$group" ] && echo "$limit_bytes bytes" || echo none)"
result=$(python3 scripts/load_client.py "$port" "$seconds" "$connections")
echo "client: $result"

# After the load: every resource held by requests must return to zero.
# Tolerant of a dead server (set -e would end the script at the first failed curl, before the checks and the log).
metric() { { curl -s --max-time 5 "http://127.0.0.1:$port/metrics" || true; } | awk -v n="$1" '$1 == n {print $2}'; }
leak_names="moe_running_sequences moe_queue_depth moe_http_generation_requests_in_flight moe_kv_reserved_bytes moe_expert_pins moe_http_held_request_bytes"
leaks=""
for _ in $(seq 30); do
  sleep 1
  leaks=""
  for name in $leak_names; do
    value=$(metric "$name"); value=${value:-missing}
    [ "$value" = "0" ] || [ "$value" = "0.0" ] || leaks="$leaks $name=$value"
  done
  [ -z "$leaks" ] && break
done

alive=yes; kill -0 "$pid" 2>/dev/null || alive=no
peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
oom_kills=0; group_peak="n/a"
if [ -n "$group" ]; then
  oom_kills=$(awk '$1 == "oom_kill" {print $2}' "$group/memory.oom_control"); oom_kills=${oom_kills:-0}
  group_peak=$(cat "$group/memory.max_usage_in_bytes")
fi
bad_5xx=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['bad_5xx'])" "$result")
echo "responses by route and status:"
curl -s --max-time 5 "http://127.0.0.1:$port/metrics" | grep '^moe_http_requests_total' || true
echo "server alive: $alive; OOM kills: $oom_kills; 5xx other than 503+Retry-After: $bad_5xx"
echo "leaked after the load (30 s allowed to settle): ${leaks:-none}"
echo "server peak RSS (VmHWM): $((peak_kb / 1024)) MiB of a $((budget_bytes >> 20)) MiB budget (+5%: $((limit_bytes >> 20)) MiB); cgroup peak usage (page cache included): $group_peak bytes"
status=0
[ "$alive" = yes ] || { echo "FAIL: the server died" >&2; status=1; }
[ "$oom_kills" = 0 ] || { echo "FAIL: OOM kills" >&2; status=1; }
[ "$bad_5xx" = 0 ] || { echo "FAIL: 5xx answers" >&2; status=1; }
[ -z "$leaks" ] || { echo "FAIL: resources not released:$leaks" >&2; status=1; }
[ "$peak_kb" -le $((limit_bytes / 1024)) ] || { echo "FAIL: peak RSS above budget + 5%" >&2; status=1; }
[ "$status" = 0 ] || { echo "server log (last 30 lines):" >&2; tail -30 "$log" >&2; }
exit $status
