#!/bin/bash
# Interleaved rounds of `moe-serve bench decode` on an emulated disk of one rate, one row per mode
# per round, to compare how the shadow uses expert surrogates (docs/PREDICTOR.md, session 36).
#
#   scripts/bench_surrogate_modes.sh RATE_MBPS SEED ROUNDS MODE...
#
# MODE is SURROGATE_SHADOW[:CHAIN[:FLOOR]]: --surrogate-shadow off|fill|early|both|early-only|confident,
# MOE_SHADOW_CHAIN on|off (default off) and MOE_EARLY_SHADOW_FLOOR (default 0.1); `nopf` runs with
# --prefetch off. MODEL (default /dev/shm/w2048c), CACHE (60MiB) and GEN (128) override the run.
# Example: scripts/bench_surrogate_modes.sh 1500 1 3 nopf off fill confident fill:on
set -euo pipefail
RATE=$1; SEED=$2; ROUNDS=$3; shift 3
MODEL=${MODEL:-/dev/shm/w2048c}; CACHE=${CACHE:-60MiB}; GEN=${GEN:-128}
BIN=${BIN:-$(dirname "$0")/../.build/release/moe-serve}
for round in $(seq "$ROUNDS"); do
  for spec in "$@"; do
    IFS=: read -r mode chain floor <<< "$spec"
    extra=(--surrogate-shadow "${mode/nopf/off}")
    [ "$mode" = nopf ] && extra+=(--prefetch off)
    MOE_EARLY_SHADOW_FLOOR=${floor:-0.1} MOE_SHADOW_CHAIN=${chain:-off} MOE_DISK_MBPS=$RATE "$BIN" bench decode \
        --model "$MODEL" --expert-cache "$CACHE" --prompt-tokens 32 --gen-tokens "$GEN" --runs 3 --seed "$SEED" \
        "${extra[@]}" 2>/dev/null | python3 -c "
import json, sys
d = json.load(sys.stdin)
tg, bound = d['decode_tokens_per_second'], d['bound_decode_tokens_per_second']
print('%-16s round %s  tg %7.2f tok/s  bound %7.2f  %3.0f%%  recall %.3f  %5.2f MB read/token  stall %3.0f%%' % (
    '$spec', '$round', tg, bound, 100 * tg / bound, d.get('recall', 0), d['bytes_read_per_token'] / 1e6, 100 * d['stall_fraction']))"
  done
done
