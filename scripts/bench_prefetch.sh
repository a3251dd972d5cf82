#!/usr/bin/env bash
# `moe-serve generate` with predictive prefetch on and off, paired: each run takes the next
# prompt of scripts/prompts/python.jsonl and generates with prefetch on and off (order
# alternating between runs), same prompt, same seed, each a fresh process (cold expert cache,
# O_DIRECT reads). Reports medians and the on/off ratio of every pair, for prefill, decode and
# the whole generation.
#   scripts/bench_prefetch.sh [MODEL] [BUDGET] [RUNS] [PREDICTOR]
# Environment: MAX_TOKENS (64), TEMPERATURE (0: greedy), BUDGET_KIND (memory-budget or
# expert-cache: what BUDGET bounds), PROMPTS (scripts/prompts/python.jsonl), EXTRA_ARGS (more
# `generate` options for both modes, e.g. "--prefetch-reads 1").
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-DemoModel}"; budget="${2:-66MiB}"; runs="${3:-5}"; predictor="${4:-cross_layer}"
max_tokens="${MAX_TOKENS:-64}"; temperature="${TEMPERATURE:-0}"; budget_kind="${BUDGET_KIND:-memory-budget}"
prompts="${PROMPTS:-scripts/prompts/python.jsonl}"
read -r -a extra_args <<< "${EXTRA_ARGS:-}"
bin=.build/release/moe-serve
[ -x "$bin" ] || swift build -c release --product moe-serve >&2
count=$(grep -c . "$prompts")
for i in $(seq "$runs"); do
  prompt=$(sed -n "$(( (i - 1) % count + 1 ))p" "$prompts" | python3 -c "import json,sys; print(json.loads(sys.stdin.read()), end='')")
  if (( i % 2 )); then modes="on off"; else modes="off on"; fi
  for prefetch in $modes; do
    "$bin" generate --model "$model" --prompt "$prompt" --max-tokens "$max_tokens" --ignore-eos \
      --temperature "$temperature" --seed "$i" --"$budget_kind" "$budget" --prefetch "$prefetch" --predictor "$predictor" ${extra_args[@]+"${extra_args[@]}"} |
      python3 -c "import json,sys; s=json.load(sys.stdin)['stats']; c=s['expert_cache']['total']; print($i, '$prefetch', s['prefill_seconds'], s['decode_seconds'], s['decode_tokens_per_second'], c['hit_rate'], c['stall_seconds'], c['demand_bytes'], c['prefetch_bytes'])"
  done
done | python3 -c "
import sys, statistics
rows = [l.split() for l in sys.stdin]
by = {(r[0], r[1]): list(map(float, r[2:])) for r in rows}
runs = sorted({r[0] for r in rows}, key=int)
med = lambda xs: statistics.median(xs)
print('| prefetch | prefill s | decode s | decode tok/s | hit rate | stall s | demand MB | prefetch MB |')
print('|---|---|---|---|---|---|---|---|')
for mode in ('on', 'off'):
    cols = list(zip(*[by[(run, mode)] for run in runs]))
    pre, dec, tps, hit, stall, demand, pf = map(med, cols)
    print(f'| {mode} | {pre:.3f} | {dec:.3f} | {tps:.1f} | {hit:.3f} | {stall:.3f} | {demand/1e6:.1f} | {pf/1e6:.1f} |')
def ratios(f):
    return [f(by[(run, 'off')]) / f(by[(run, 'on')]) for run in runs]
for name, f in (('prefill', lambda v: v[0]), ('decode', lambda v: v[1]), ('generate (prefill + decode)', lambda v: v[0] + v[1])):
    r = ratios(f)
    faster = sum(x > 1 for x in r)
    print(f'{name}: speed-up with prefetch {med(r):.2f}x (median of {len(r)} paired runs; {faster} of {len(r)} faster; per run ' + ', '.join(f'{x:.2f}' for x in r) + ')')
"
