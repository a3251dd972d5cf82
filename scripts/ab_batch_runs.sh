#!/bin/bash
# Single `bench batch` runs of two settings of an environment switch, alternating run by run (the order flipping
# each pair), then a summary per concurrency: decode speed on ÷ off per pair, and what the disk's rate cannot move,
# the expert bytes read per token and the hit rate. Why single runs: on a cloud disk whose rate swings from one run
# to the next (`runs_stall_ms_per_miss`: 0.30-1.03 ms in one set), the medians of 3-run blocks taken arm after arm
# followed the disk, not the setting (docs/expert-cache.md, "The layer that just ran waits longest").
# READ_MBPS=N runs every command with its reads from the model's disk throttled to N MB/s (scripts/run_throttled.sh;
# root): below the disk's slowest rate, the disk then reads at one steady rate, and what the setting
# does to the time shows through (e.g. READ_MBPS=600 on the machine of docs/BENCHMARKS.md, whose disk gave 0.9-3 GB/s).
# VAR is an environment variable, or an option of `bench batch` (starting with --) given FIRST or SECOND as its value.
# SEQUENCES may list several sizes (32,64): each run measures them all, and each gets its own summary.
# Usage: [MODEL=DIR] [CACHE=60MiB] [GEN=32] [EXTRA="--prefetch off"] [READ_MBPS=600] \
#        scripts/ab_batch_runs.sh VAR FIRST SECOND SEQUENCES PAIRS OUT
# e.g.   scripts/ab_batch_runs.sh MOE_LAYER_DISTANCE off on 8 10 /tmp/ab-ld
#        READ_MBPS=600 scripts/ab_batch_runs.sh --prefetch-min-probability 0.7 0.9 1 8 /tmp/ab-floor
set -euo pipefail
VAR=${1:?usage: scripts/ab_batch_runs.sh VAR FIRST SECOND SEQUENCES PAIRS OUT}; FIRST=${2:?}; SECOND=${3:?}
N=${4:?}; PAIRS=${5:?}; OUT=${6:?}; mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd); B=${B:-$ROOT/.build/release/moe-serve}
MODEL=${MODEL:-/work/bench/w2048}; CACHE=${CACHE:-60MiB}
RUN=()
if [ -n "${READ_MBPS:-}" ]; then
  RUN=("$ROOT/scripts/run_throttled.sh" "$READ_MBPS" "$MODEL" --)
  echo "reads from $MODEL's disk throttled to $READ_MBPS MB/s" >&2
fi
for r in $(seq 1 "$PAIRS"); do
  if [ $((r % 2)) = 1 ]; then order="$FIRST $SECOND"; else order="$SECOND $FIRST"; fi
  for v in $order; do
    # VAR is an environment switch, or an option of `bench batch` when it starts with --.
    if [[ $VAR == --* ]]; then setting=(env); option=("$VAR" "$v"); else setting=(env "$VAR=$v"); option=(); fi
    # shellcheck disable=SC2086 # EXTRA is a list of options
    "${setting[@]}" "${RUN[@]}" "$B" bench batch "${option[@]}" --model "$MODEL" --sequences "$N" --prompts "$ROOT/scripts/prompts/python.jsonl" \
      --temperature 0.7 --gen-tokens "${GEN:-32}" --prompt-tokens 16 --expert-cache "$CACHE" --runs 1 --seed "$r" ${EXTRA:-} \
      > "$OUT/$v-$N-$r.json" 2> "$OUT/$v-$N-$r.err"
  done
done
python3 - "$OUT" "$N" "$PAIRS" "$FIRST" "$SECOND" "$VAR" <<'PY'
import json, statistics, sys
out, n, pairs, first, second, var = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
def results(v, r):
    # stdout holds the JSON report (one line starting with "{")
    with open(f"{out}/{v}-{n}-{r}.json") as f:
        return json.loads(next(line for line in f if line.startswith("{")))["results"]
for index, size in enumerate(n.split(",")):
    row = lambda v, r: results(v, r)[index]
    speed, bytes_, hits, full = [], [], [], []
    print(f"\n{size} sequences\n")
    print(f"| pair | {first}: tok/s | MB / token | hit rate | stall ms / miss | {second}: tok/s | MB / token | hit rate | stall ms / miss | × |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in range(1, pairs + 1):
        a, b = row(first, r), row(second, r)
        speed.append(b["decode_tokens_per_second"] / a["decode_tokens_per_second"])
        bytes_.append(b["expert_bytes_read_per_token"] / a["expert_bytes_read_per_token"])
        hits.append(b["hit_rate"] - a["hit_rate"])
        # The steps that ran every sequence (bench batch's full_batch_*; absent in older builds).
        if a.get("full_batch_tokens_per_second") and b.get("full_batch_tokens_per_second"):
            full.append(b["full_batch_tokens_per_second"] / a["full_batch_tokens_per_second"])
        cells = lambda x: f"{x['decode_tokens_per_second']:.1f} | {x['expert_bytes_read_per_token'] / 1e6:.2f} | {x['hit_rate']:.3f} | {x['runs_stall_ms_per_miss'][0]:.2f}"
        print(f"| {r} | {cells(a)} | {cells(b)} | {speed[-1]:.3f} |")
    print(f"\n{var} {second} ÷ {first}, {size} sequences, {pairs} pairs: speed {statistics.median(speed):.3f}x median "
          f"(faster in {sum(x > 1 for x in speed)}); bytes per token {statistics.median(bytes_):.3f}x median "
          f"(fewer in {sum(x < 1 for x in bytes_)}); hit rate {statistics.median(hits):+.4f} median (higher in {sum(x > 0 for x in hits)})"
          + (f"; while all {size} ran: speed {statistics.median(full):.3f}x median (faster in {sum(x > 1 for x in full)} of {len(full)})" if full else ""))
PY
