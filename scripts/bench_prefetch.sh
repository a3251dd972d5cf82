#!/usr/bin/env bash
# Decode speed with predictive prefetch on and off, alternating in one run so both see the same
# machine load; each run is a fresh process (cold expert cache, O_DIRECT reads).
#   scripts/bench_prefetch.sh [MODEL] [BUDGET] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-DemoModel}"; budget="${2:-66MiB}"; runs="${3:-5}"; predictor="${4:-cross_layer}"
bin=.build/release/moe-serve
[ -x "$bin" ] || swift build -c release --product moe-serve >&2
for i in $(seq "$runs"); do
  for prefetch in on off; do
    "$bin" generate --model "$model" --prompt "def fibonacci(n):" --max-tokens 64 --ignore-eos \
      --memory-budget "$budget" --prefetch "$prefetch" --predictor "$predictor" |
      python3 -c "import json,sys; s=json.load(sys.stdin)['stats']; c=s['expert_cache']['total']; print('$prefetch', s['decode_tokens_per_second'], c['hit_rate'], c['stall_seconds'], c['demand_bytes'], c['prefetch_bytes'])"
  done
done | python3 -c "
import sys, statistics
rows = [l.split() for l in sys.stdin]
out = {}
for mode in ('on', 'off'):
    r = [list(map(float, x[1:])) for x in rows if x[0] == mode]
    out[mode] = [statistics.median(c) for c in zip(*r)]
print('| prefetch | decode tok/s (median) | hit rate | stall s | demand MB | prefetch MB |')
print('|---|---|---|---|---|---|')
for mode, (tps, hit, stall, demand, pre) in out.items():
    print(f'| {mode} | {tps:.1f} | {hit:.3f} | {stall:.3f} | {demand/1e6:.1f} | {pre/1e6:.1f} |')
print(f'speed-up with prefetch: {out[\"on\"][0] / out[\"off\"][0]:.2f}x over {len(rows)//2} runs each')
"
