#!/bin/bash
# `bench decode` with the model's disk throttled to a steady rate (scripts/run_throttled.sh; root), then item 2 of
# issue 26 read two ways: bench decode's own % of the bound (needed bytes ÷ the rate while reads were in flight, or
# the compute time not stalled, whichever is longer), and the decode speed against the throttle's rate alone
# (needed bytes per token ÷ MB_PER_SECOND). Why throttle: this cloud disk's own rate swings 0.7-3 GB/s from minute to
# minute, so a bound measured on it says more about the disk than about the engine (docs/BENCHMARKS.md, "Session 26").
# Usage: scripts/decode_bound_throttled.sh MB_PER_SECOND MODEL EXPERT_CACHE GEN_TOKENS OUT.json [bench decode options]
# e.g.   scripts/decode_bound_throttled.sh 600 /work/bench/w2048 60MiB 64 /tmp/w2048-600.json
set -euo pipefail
MBPS=${1:?usage: scripts/decode_bound_throttled.sh MB_PER_SECOND MODEL EXPERT_CACHE GEN_TOKENS OUT.json [options]}
MODEL=${2:?}; CACHE=${3:?}; GEN=${4:?}; OUT=${5:?}; shift 5
ROOT=$(cd "$(dirname "$0")/.." && pwd); B=${B:-$ROOT/.build/release/moe-serve}
"$ROOT/scripts/run_throttled.sh" "$MBPS" "$MODEL" -- "$B" bench decode --model "$MODEL" --expert-cache "$CACHE" \
  --prompt-tokens 32 --gen-tokens "$GEN" --runs "${RUNS:-3}" "$@" > "$OUT" 2> "${OUT%.json}.err"
python3 - "$OUT" "$MBPS" <<'PY'
import json, sys
report, rate = json.load(open(sys.argv[1])), float(sys.argv[2]) * 1e6
r = report if "runs" in report else report["results"][0]
runs = r["runs"]
tokens = sum(x["decode_bytes_read"] for x in runs) / r["bytes_read_per_token"]
needed = sum(x["decode_bytes_needed"] for x in runs) / tokens
busy = sum(x["decode_io_busy_seconds"] for x in runs) / sum(x["decode_seconds"] for x in runs)
at_rate = 1 / max(needed / rate, r["compute_seconds_per_token"])
print(f"{r['model']} at {rate / 1e6:.0f} MB/s: tg {r['decode_tokens_per_second']:.2f} tok/s; "
      f"bench decode's bound {r['bound_decode_tokens_per_second']:.2f} ({100 * r['decode_tokens_per_second'] / r['bound_decode_tokens_per_second']:.0f}%, "
      f"disk {r['bound_disk_gb_per_second']:.3f} GB/s while busy); at the throttle's rate {at_rate:.2f} "
      f"({100 * r['decode_tokens_per_second'] / at_rate:.0f}%); delivered {r['delivered_gb_per_second']:.3f} GB/s; "
      f"disk busy {100 * busy:.0f}%; MB read / needed per token {r['bytes_read_per_token'] / 1e6:.1f} / {needed / 1e6:.1f}; "
      f"compute {1e3 * r['compute_seconds_per_token']:.1f} ms per token")
PY
