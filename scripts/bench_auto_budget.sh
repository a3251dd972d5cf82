#!/usr/bin/env bash
# `--memory-budget auto` under a neighbour that grows and then leaves (issue 26 item 6).
#
#   scripts/bench_auto_budget.sh MODEL LIMIT HOG [PHASE_SECONDS]
#
# Makes a cgroup v1 memory group with limit LIMIT (e.g. 700M), starts `moe-serve serve --model MODEL
# --memory-budget auto` in it, and measures three phases of PHASE_SECONDS (default 20) each, while a
# client decodes back to back (64-token greedy /completion requests):
#   alone  - the server by itself (its cache grows into the limit);
#   hog    - a second process in the same cgroup allocates HOG (e.g. 350M) in 16 MiB steps, two a
#            second, touches every page and holds it;
#   after  - the hog has exited.
# Every half second it samples the server's moe_memory_budget_bytes, moe_expert_cache_bytes_budget
# and the cgroup's usage. Prints one JSON object per phase: median budget, min/max budget, decode
# tok/s (median over requests), hit rate; then the cgroup's OOM-kill count and whether the server
# is still up. Run it again with a fixed budget (BUDGET=600MiB) to see what auto saves it from.
# Needs a writable /sys/fs/cgroup/memory (root), python3 and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: $0 MODEL LIMIT HOG [PHASE_SECONDS]" >&2; exit 2; }
model="$1"; limit_arg="$2"; hog_arg="$3"; phase="${4:-20}"
budget="${BUDGET:-auto}"
bin=.build/release/moe-serve
[ -x "$bin" ] || { echo "build first: swift build -c release" >&2; exit 1; }
to_bytes() { python3 -c "import sys; v=sys.argv[1]; m={'K':1<<10,'M':1<<20,'G':1<<30}; print(int(v[:-1])*m[v[-1].upper()] if v[-1].upper() in m else int(v))" "$1"; }
limit=$(to_bytes "$limit_arg"); hog=$(to_bytes "$hog_arg")
root=/sys/fs/cgroup/memory
[ -w "$root" ] || { echo "$root is not a writable cgroup v1 memory hierarchy" >&2; exit 2; }
group="$root/moe-serve-auto-bench-$$"
mkdir "$group"
echo "$limit" > "$group/memory.limit_in_bytes"
[ -e "$group/memory.memsw.limit_in_bytes" ] && echo "$limit" > "$group/memory.memsw.limit_in_bytes"
work=$(mktemp -d)
pid=""; hog_pid=""
cleanup() {
    [ -n "$hog_pid" ] && kill "$hog_pid" 2>/dev/null || true
    [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    echo 0 > "$group/memory.force_empty" 2>/dev/null || true
    rmdir "$group" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

bash -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$group" "$bin" serve --model "$model" --port 0 \
    --memory-budget "$budget" 2>"$work/server.log" &
pid=$!
for _ in $(seq 300); do grep -q -e "model loaded; ready" -e "^error" "$work/server.log" && break; sleep 0.2; done
grep -q "model loaded; ready" "$work/server.log" || { echo "server did not start:" >&2; cat "$work/server.log" >&2; exit 1; }
port=$(grep -o "listening on http://127.0.0.1:[0-9]*" "$work/server.log" | head -1 | sed 's/.*://')
grep "memory budget" "$work/server.log" >&2 || true

# Sampler: time, process budget, expert cache budget, cgroup usage.
( while kill -0 "$pid" 2>/dev/null; do
      m=$(curl -s --max-time 2 "http://127.0.0.1:$port/metrics" || true)
      b=$(awk '/^moe_memory_budget_bytes/ {print $2}' <<<"$m"); c=$(awk '/^moe_expert_cache_bytes_budget/ {print $2}' <<<"$m")
      echo "$(date +%s.%N) ${b:-nan} ${c:-nan} $(cat "$group/memory.usage_in_bytes")"
      sleep 0.5
  done ) > "$work/samples.txt" &

# Client: back-to-back greedy requests; one line per request: end time, predicted tokens/s.
( while kill -0 "$pid" 2>/dev/null; do
      r=$(curl -s --max-time 60 "http://127.0.0.1:$port/completion" -H 'Content-Type: application/json' \
          -d '{"prompt": "def fibonacci(n):", "n_predict": 64, "temperature": 0, "ignore_eos": true, "cache_prompt": false}' || true)
      t=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['timings']['predicted_per_second'])" "$r" 2>/dev/null || echo nan)
      echo "$(date +%s.%N) $t"
  done ) > "$work/requests.txt" &

hits() { curl -s "http://127.0.0.1:$port/metrics" | awk '/^moe_expert_cache_(hits|misses)_total/ {s[$1]+=$2} END {printf "%d %d\n", s["moe_expert_cache_hits_total"], s["moe_expert_cache_misses_total"]}'; }
marks=()
mark() { marks+=("$1 $(date +%s.%N) $(hits)"); }
mark alone; sleep "$phase"
mark hog
python3 - "$hog" "$group" <<'PY' &
import mmap, os, sys, time
total, group = int(sys.argv[1]), sys.argv[2]
with open(os.path.join(group, "cgroup.procs"), "w") as f: f.write(str(os.getpid()))
chunks, step = [], 16 << 20
while sum(len(c) for c in chunks) < total:
    m = mmap.mmap(-1, min(step, total - sum(len(c) for c in chunks)))
    for i in range(0, len(m), 4096): m[i] = 1
    chunks.append(m); time.sleep(0.5)
time.sleep(float(os.environ.get("HOG_HOLD", "1e9")))
PY
hog_pid=$!
sleep "$phase"
kill "$hog_pid" 2>/dev/null || true; wait "$hog_pid" 2>/dev/null || true; hog_pid=""
mark after; sleep "$phase"
mark end
up=$(kill -0 "$pid" 2>/dev/null && echo true || echo false)
oom=$(awk '$1 == "oom_kill" {print $2}' "$group/memory.oom_control")

python3 - "$work/samples.txt" "$work/requests.txt" "$limit" "$hog" "$budget" "$up" "${oom:-0}" "${marks[@]}" <<'PY'
import json, statistics, sys
samples = [l.split() for l in open(sys.argv[1]) if l.strip()]
requests = [l.split() for l in open(sys.argv[2]) if l.strip()]
limit, hog, budget, up, oom = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], int(sys.argv[7])
marks = [m.split() for m in sys.argv[8:]]
mib = lambda v: round(v / 2**20, 1)
for (name, t0, h0, m0), (_, t1, h1, m1) in zip(marks, marks[1:]):
    t0, t1 = float(t0), float(t1)
    s = [x for x in samples if t0 <= float(x[0]) < t1 and x[1] != "nan"]
    r = [float(x[1]) for x in requests if t0 <= float(x[0]) < t1 and x[1] != "nan"]
    budgets = [float(x[1]) for x in s]; caches = [float(x[2]) for x in s]; usage = [float(x[3]) for x in s]
    hits, misses = int(h1) - int(h0), int(m1) - int(m0)
    print(json.dumps({
        "phase": name, "seconds": round(t1 - t0, 1), "memory_budget": budget, "cgroup_limit_mib": mib(limit), "hog_mib": mib(hog),
        "process_budget_mib_median": mib(statistics.median(budgets)) if budgets else None,
        "process_budget_mib_min": mib(min(budgets)) if budgets else None, "process_budget_mib_max": mib(max(budgets)) if budgets else None,
        "expert_cache_budget_mib_median": mib(statistics.median(caches)) if caches else None,
        "cgroup_usage_mib_max": mib(max(usage)) if usage else None,
        "requests": len(r), "decode_tok_s_median": round(statistics.median(r), 1) if r else None,
        "hit_rate": round(hits / (hits + misses), 3) if hits + misses else None}))
print(json.dumps({"server_up_at_end": up == "true", "cgroup_oom_kills": oom}))
PY
