#!/bin/bash
# Interleaved A/B rounds of `moe-serve bench decode`: one row per variant per round, then each
# variant's median tok/s, % of the bound, recall and MB read per token (docs/PREDICTOR.md).
#
#   scripts/bench_ab.sh RATE_MBPS SEED ROUNDS LABEL=SETTING[,SETTING...] ...
#
# RATE_MBPS is the emulated disk's rate (MOE_DISK_MBPS); "" reads the model's own disk. Each
# SETTING is an environment assignment (MOE_SHADOW_CHAIN=on), `mode:M` (--surrogate-shadow M; `nopf`
# runs prefetch off), `threads:N` (--reader-threads N) or a flag of bench decode written with `=`
# (--prefetch-reads=1); a bare `LABEL=` runs the defaults.
# MODEL (default /dev/shm/w2048c), CACHE (60MiB), GEN (128), EXTRA (more flags for every row) and
# BIN override the run. Example, prefetch off against the default and two reader threads:
#   scripts/bench_ab.sh 1500 1 3 off=mode:nopf default= two=threads:2
set -euo pipefail
RATE=$1; SEED=$2; ROUNDS=$3; shift 3
MODEL=${MODEL:-/dev/shm/w2048c}; CACHE=${CACHE:-60MiB}; GEN=${GEN:-128}
BIN=${BIN:-$(dirname "$0")/../.build/release/moe-serve}
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
for round in $(seq "$ROUNDS"); do
  for spec in "$@"; do
    label=${spec%%=*}; settings=${spec#*=}
    [ "$label" = "$spec" ] && settings=""
    envs=(MOE_DISK_MBPS="$RATE"); flags=()
    IFS=, read -ra parts <<< "$settings"
    for part in "${parts[@]}"; do
      case $part in
        mode:nopf) flags+=(--prefetch off) ;;
        mode:*) flags+=(--surrogate-shadow "${part#mode:}") ;;
        threads:*) flags+=(--reader-threads "${part#threads:}") ;;
        --*) flags+=("$part") ;;
        *=*) envs+=("$part") ;;
        "") ;;
        *) echo "bench_ab: unknown setting '$part' (expected NAME=VALUE, mode:M, threads:N or --flag=value)" >&2; exit 2 ;;
      esac
    done
    # shellcheck disable=SC2086  # EXTRA is a list of flags
    env "${envs[@]}" "$BIN" bench decode --model "$MODEL" --expert-cache "$CACHE" --prompt-tokens 32 \
        --gen-tokens "$GEN" --runs 3 --seed "$SEED" "${flags[@]}" ${EXTRA:-} 2>/dev/null | python3 -c "
import json, sys
d = json.load(sys.stdin)
tg, bound = d['decode_tokens_per_second'], d['bound_decode_tokens_per_second']
print('%s\t%s\t%.2f\t%.2f\t%.3f\t%.2f' % ('$label', '$round', tg, 100 * tg / bound, d.get('recall', 0), d['bytes_read_per_token'] / 1e6))" \
        | tee -a "$rows" | awk -F'\t' '{printf "%-16s round %s  %7.2f tok/s  %3.0f%% of the bound  recall %.3f  %5.2f MB/token\n", $1, $2, $3, $4, $5, $6}'
  done
done
echo "medians of $ROUNDS rounds:"
python3 - "$rows" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, _, tg, pct, recall, mb = line.rstrip('\n').split('\t')
    rows.setdefault(label, []).append((float(tg), float(pct), float(recall), float(mb)))
first = None
for label, runs in rows.items():
    tg = statistics.median(r[0] for r in runs)
    first = first or tg
    print('%-16s %7.2f tok/s (%.2fx the first)  %3.0f%% of the bound  recall %.3f  %5.2f MB/token' % (
        label, tg, tg / first, statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs),
        statistics.median(r[3] for r in runs)))
PY
