#!/bin/bash
# Paired `bench batch` rounds with the measured recency bonus off and on (MOE_LEARNED_RECENCY; PAIR="off duel" pairs the
# fixed bonus with the two dueling, docs/expert-cache.md "Two bonuses dueling"), the order alternating,
# each run's routing recorded; then each round's median 8-sequence run replayed as recorded (`bench trace --as-recorded`),
# so the live hit rate can be read against the replay's (docs/expert-cache.md, "The live routing replayed").
# Usage: [MODEL=DIR] [CACHE=60MiB] [PER_LAYER=8] [ROUNDS=4] [PREFETCH=off] [PAIR="off on"] scripts/ab_recency_batch.sh OUT
set -euo pipefail
OUT=${1:?usage: scripts/ab_recency_batch.sh OUT}; mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd); B=${B:-$ROOT/.build/release/moe-serve}
MODEL=${MODEL:-/work/bench/w2048}; CACHE=${CACHE:-60MiB}; PER_LAYER=${PER_LAYER:-8}; PREFETCH=${PREFETCH:-off}
read -r FIRST SECOND <<< "${PAIR:-off on}"
for r in $(seq 1 "${ROUNDS:-4}"); do
  if [ $((r % 2)) = 1 ]; then order="$FIRST $SECOND"; else order="$SECOND $FIRST"; fi
  for v in $order; do
    mkdir -p "$OUT/traces-$v-r$r"
    MOE_LEARNED_RECENCY=$v "$B" bench batch --model "$MODEL" --sequences 1,8 --prompts "$ROOT/scripts/prompts/python.jsonl" \
      --temperature 0.7 --gen-tokens 32 --prompt-tokens 16 --expert-cache "$CACHE" --runs 3 --seed "$r" --prefetch "$PREFETCH" \
      --record-trace "$OUT/traces-$v-r$r" > "$OUT/$v-r$r.json" 2> "$OUT/$v-r$r.err"
  done
done
python3 - "$OUT" "${ROUNDS:-4}" "$B" "$PER_LAYER" "$PREFETCH" "$FIRST" "$SECOND" <<'PY'
import json, subprocess, sys
out, rounds, binary, per_layer, prefetch = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
names = {"off": ("fixed", "sequence_global"), "on": ("measured", "sequence_measured_global"), "duel": ("dueling", "sequence_dueling_global")}
print("| round | bonus | 8 sequences: live hit rate | replay of its routing | decode tok/s |\n|---|---|---|---|---|")
for r in range(1, rounds + 1):
    for v in sys.argv[6:8]:
        label, policy = names[v]
        row = [x for x in json.load(open(f"{out}/{v}-r{r}.json"))["results"] if x["sequences"] == 8][0]
        runs = row["runs_tokens_per_second"]
        median = sorted(range(len(runs)), key=lambda i: runs[i])[len(runs) // 2] + 1
        trace = f"{out}/traces-{v}-r{r}/batch-8seq-prefetch-{prefetch}-run{median}.jsonl"
        replay = json.loads(subprocess.run([binary, "bench", "trace", trace, "--cache-per-layer", per_layer, "--as-recorded"],
                                           capture_output=True, text=True, check=True).stdout)
        print(f"| {r} | {label} | {row['hit_rate']:.4f} | "
              f"{replay['policies'][policy]['decode_window']['hit_rate']:.4f} | {row['decode_tokens_per_second']:.1f} |")
PY
