#!/usr/bin/env bash
# How much could prefetch gain with a perfect predictor? For each prompt of PROMPTS: a greedy
# `generate` records its routing (--record-trace), then the same generation runs with prefetch off,
# with the real predictor (prefetch on), and with the oracle (--oracle-trace: prefetch exactly what
# the layer DEPTH MoE layers ahead will use) at each depth — fresh processes, cold expert cache,
# O_DIRECT reads, order rotating per prompt. Reports median decode tok/s per mode and, per mode,
# the median over prompts of its speed-up against prefetch off in the same round.
#   scripts/bench_oracle_prefetch.sh [MODEL] [EXPERT_CACHE] [RUNS] [DEPTHS]
# Environment: MAX_TOKENS (128), PROMPTS (scripts/prompts/python.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-DemoModel}"; cache="${2:-144MiB}"; runs="${3:-5}"; depths="${4:-1,2,3}"
max_tokens="${MAX_TOKENS:-128}"; prompts="${PROMPTS:-scripts/prompts/python.jsonl}"
bin=.build/release/moe-serve
[ -x "$bin" ] || swift build -c release --product moe-serve >&2
trace=$(mktemp /tmp/oracle-trace.XXXXXX.jsonl)
trap 'rm -f "$trace"' EXIT
count=$(grep -c . "$prompts")
modes=(off on)
for depth in ${depths//,/ }; do modes+=("oracle$depth"); done
for i in $(seq "$runs"); do
  prompt=$(sed -n "$(( (i - 1) % count + 1 ))p" "$prompts" | python3 -c "import json,sys; print(json.loads(sys.stdin.read()), end='')")
  common=(generate --model "$model" --prompt "$prompt" --max-tokens "$max_tokens" --ignore-eos --expert-cache "$cache")
  "$bin" "${common[@]}" --prefetch off --record-trace "$trace" > /dev/null
  # Rotate the order so that no mode always runs first (or right after the recording run).
  n=${#modes[@]}
  for k in $(seq 0 $((n - 1))); do
    mode=${modes[$(( (k + i) % n ))]}
    case "$mode" in
      off|on) extra=(--prefetch "$mode") ;;
      oracle*) extra=(--prefetch off --oracle-trace "$trace" --oracle-depth "${mode#oracle}") ;;
    esac
    "$bin" "${common[@]}" "${extra[@]}" |
      python3 -c "import json,sys; s=json.load(sys.stdin)['stats']; c=s['expert_cache']['total']; print($i, '$mode', s['decode_tokens_per_second'], c['stall_seconds'], c.get('prefetches_late', 0))"
  done
done | python3 -c "
import sys, statistics
rows = [l.split() for l in sys.stdin]
by = {(r[0], r[1]): list(map(float, r[2:])) for r in rows}
runs = sorted({r[0] for r in rows}, key=int)
modes = list(dict.fromkeys(r[1] for r in rows))
print('| mode | decode tok/s (median) | stall s | late prefetches | speed-up vs off (median of rounds) | per round |')
print('|---|---|---|---|---|---|')
for mode in modes:
    tps = statistics.median(by[(r, mode)][0] for r in runs)
    stall = statistics.median(by[(r, mode)][1] for r in runs)
    late = statistics.median(by[(r, mode)][2] for r in runs)
    ratios = [by[(r, mode)][0] / by[(r, 'off')][0] for r in runs]
    print(f'| {mode} | {tps:.1f} | {stall:.3f} | {late:.0f} | {statistics.median(ratios):.2f}x | {\", \".join(f\"{x:.2f}\" for x in ratios)} |')
"
