#!/usr/bin/env bash
# Decode (and prefill) speed of several prefetch configurations side by side, per prompt, against prefetch off.
# For each prompt of PROMPTS every MODE runs `moe-serve generate` (greedy, fresh process, cold
# expert cache, O_DIRECT reads) in an order rotating per prompt, so that no mode always runs first.
# A MODE is NAME=ARGS (extra `generate` options); the token ORACLE_TRACE in ARGS stands for the
# routing a recording run of the same prompt made (`--oracle-trace ORACLE_TRACE --oracle-depth 2
# --prefetch off` is the perfect predictor). A mode named `off` is the baseline (added if absent).
#   scripts/bench_prefetch_modes.sh MODEL EXPERT_CACHE RUNS MODE...
# e.g. scripts/bench_prefetch_modes.sh /tmp/demo-w2048 96MiB 9 'gate=--prefetch on' \
#        'select=--prefetch on --predictor-probes DemoModel/predictor-probes.safetensors'
# ARGS may begin with NAME=VALUE words: that mode's environment (e.g. 'noexp=MOE_EXPECTED_LAST=0 --prefetch on').
# Environment: MAX_TOKENS (128), PROMPTS (scripts/prompts/python.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
model="$1"; cache="$2"; runs="$3"; shift 3
max_tokens="${MAX_TOKENS:-128}"; prompts="${PROMPTS:-scripts/prompts/python.jsonl}"
bin=.build/release/moe-serve
[ -x "$bin" ] || swift build -c release --product moe-serve >&2
names=(); specs=()
for mode in "$@"; do names+=("${mode%%=*}"); specs+=("${mode#*=}"); done
if [[ " ${names[*]} " != *" off "* ]]; then names=(off "${names[@]}"); specs=("--prefetch off" "${specs[@]}"); fi
trace=$(mktemp /tmp/prefetch-modes-trace.XXXXXX.jsonl)
trap 'rm -f "$trace"' EXIT
count=$(grep -c . "$prompts")
n=${#names[@]}
for i in $(seq "$runs"); do
  prompt=$(sed -n "$(( (i - 1) % count + 1 ))p" "$prompts" | python3 -c "import json,sys; print(json.loads(sys.stdin.read()), end='')")
  common=(generate --model "$model" --prompt "$prompt" --max-tokens "$max_tokens" --ignore-eos --expert-cache "$cache")
  if [[ "${specs[*]}" == *ORACLE_TRACE* ]]; then "$bin" "${common[@]}" --prefetch off --record-trace "$trace" > /dev/null; fi
  for k in $(seq 0 $((n - 1))); do
    j=$(( (k + i) % n ))
    read -r -a extra <<< "${specs[$j]//ORACLE_TRACE/$trace}"
    # Leading NAME=VALUE words are the environment of that mode's process (for A/B switches).
    envs=()
    while [ ${#extra[@]} -gt 0 ] && [[ "${extra[0]}" =~ ^[A-Z_][A-Z0-9_]*= ]]; do envs+=("${extra[0]}"); extra=("${extra[@]:1}"); done
    env ${envs[@]+"${envs[@]}"} "$bin" "${common[@]}" ${extra[@]+"${extra[@]}"} |
      python3 -c "
import json,sys
s=json.load(sys.stdin)['stats']; c=s['expert_cache']['total']
print($i, '${names[$j]}', s['decode_tokens_per_second'], c['stall_seconds'], c['demand_bytes'] / 1e6, c['prefetch_bytes'] / 1e6, c.get('prefetches_late', 0), s['prefill_seconds'])"
  done
done | python3 -c "
import sys, statistics
rows = [l.split() for l in sys.stdin]
by = {(r[0], r[1]): list(map(float, r[2:])) for r in rows}
runs = sorted({r[0] for r in rows}, key=int)
modes = list(dict.fromkeys(r[1] for r in rows))
print('| mode | decode tok/s (median) | stall s | demand MB | prefetch MB | late prefetches | speed-up vs off (median of rounds) | faster rounds | per round | prefill speed-up vs off (faster rounds) |')
print('|---|---|---|---|---|---|---|---|---|---|')
for mode in modes:
    med = lambda c: statistics.median(by[(r, mode)][c] for r in runs)
    ratios = [by[(r, mode)][0] / by[(r, 'off')][0] for r in runs]
    faster = sum(x > 1 for x in ratios)
    prefill = [by[(r, 'off')][5] / by[(r, mode)][5] for r in runs]
    print(f'| {mode} | {med(0):.1f} | {med(1):.3f} | {med(2):.0f} | {med(3):.0f} | {med(4):.0f} | {statistics.median(ratios):.2f}x | {faster} of {len(ratios)} | {\", \".join(f\"{x:.2f}\" for x in ratios)} | {statistics.median(prefill):.2f}x ({sum(x > 1 for x in prefill)} of {len(prefill)}) |')
"
