#!/usr/bin/env bash
# Side-by-side decode/prefill of two moe-serve binaries (e.g. before and after a change), alternating
# rounds of `bench decode` on the same model and budget; prints each round and the medians.
# Usage: scripts/ab_decode.sh OLD_BINARY NEW_BINARY [MODEL=DemoModel] [BUDGET=4GiB] [ROUNDS=9]
set -euo pipefail
old=$1; new=$2; model=${3:-DemoModel}; budget=${4:-4GiB}; rounds=${5:-9}
out=$(mktemp); trap 'rm -f "$out"' EXIT
for r in $(seq 1 "$rounds"); do
  for which in old new; do
    bin=${!which}
    "$bin" bench decode --model "$model" --memory-budget "$budget" --prompt-tokens 64 --gen-tokens 256 --runs 5 2>/dev/null \
      | python3 -c "import json,sys;d=json.load(sys.stdin);print('$which', d['decode_tokens_per_second'], d['prefill_tokens_per_second'])" \
      | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
get = lambda who, col: [float(r[col]) for r in rows if r[0] == who]
for col, name in ((1, "decode"), (2, "prefill")):
    old, new = get("old", col), get("new", col)
    ratios = [b / a for a, b in zip(old, new)]
    print(f"{name}: old median {statistics.median(old):.1f} tok/s, new median {statistics.median(new):.1f} tok/s, "
          f"paired ratio median {statistics.median(ratios):.3f} (new faster in {sum(r > 1 for r in ratios)} of {len(ratios)})")
PY
