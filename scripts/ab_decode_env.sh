#!/bin/bash
# Paired `bench decode` rounds with an environment switch at two values, the order alternating between rounds,
# then per round the decode rate of the second value over the first's and the median.
# Usage: [MODEL=DIR] [CACHE=60MiB] [GEN=64] scripts/ab_decode_env.sh VAR FIRST SECOND ROUNDS OUT
#   e.g. scripts/ab_decode_env.sh MOE_LEARNED_RECENCY off duel 6 /tmp/ab-duel
set -euo pipefail
VAR=${1:?usage: scripts/ab_decode_env.sh VAR FIRST SECOND ROUNDS OUT}; FIRST=${2:?}; SECOND=${3:?}; ROUNDS=${4:?}; OUT=${5:?}
ROOT=$(cd "$(dirname "$0")/.." && pwd); B=${B:-$ROOT/.build/release/moe-serve}
MODEL=${MODEL:-/work/bench/w2048}; CACHE=${CACHE:-60MiB}; GEN=${GEN:-64}
mkdir -p "$OUT"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="$FIRST $SECOND"; else order="$SECOND $FIRST"; fi
  for v in $order; do
    env "$VAR=$v" "$B" bench decode --model "$MODEL" --expert-cache "$CACHE" --prompt-tokens 32 --gen-tokens "$GEN" \
      --runs 3 --seed "$r" > "$OUT/$v-r$r.json" 2> "$OUT/$v-r$r.err"
  done
done
python3 - "$OUT" "$ROUNDS" "$FIRST" "$SECOND" <<'PY'
import json, statistics, sys
out, rounds, first, second = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ratios = []
for r in range(1, rounds + 1):
    a, b = (json.load(open(f"{out}/{v}-r{r}.json")) for v in (first, second))
    rate = lambda z: z["decode_tokens_per_second"]
    ratios.append(rate(b) / rate(a))
    print(f"round {r}: {first} {rate(a):.2f} tok/s, {second} {rate(b):.2f} tok/s, x{ratios[-1]:.3f} | "
          f"delivered GB/s {a.get('delivered_gb_per_second') or 0:.2f} {b.get('delivered_gb_per_second') or 0:.2f} | "
          f"MB read/token {a['bytes_read_per_token'] / 1e6:.1f} {b['bytes_read_per_token'] / 1e6:.1f} | "
          f"stall {a['stall_fraction']:.2f} {b['stall_fraction']:.2f}")
print(f"median x{statistics.median(ratios):.3f}, {second} faster in {sum(x > 1 for x in ratios)} of {len(ratios)}")
PY
