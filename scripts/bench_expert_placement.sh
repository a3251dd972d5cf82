#!/usr/bin/env bash
# Records routing traces of the demo model on both prompt families, then scores expert placements
# over M machines (scripts/expert_placement.py; docs/SCALING.md, "Expert parallelism"). Holds the build lock.
set -euo pipefail
cd "$(dirname "$0")/.."
# Take the lock once for all the runs (waiting for it 24 times on a shared machine takes far longer).
if [ -z "${MOE_HOLDS_BUILD_LOCK:-}" ]; then
  MOE_HOLDS_BUILD_LOCK=1 exec flock /tmp/moe-build.lock "$0" "$@"
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
i=0
for family in python prose; do
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    prompt=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]))' "$line")
    .build/release/moe-serve generate --prompt "$prompt" --max-tokens 48 --temperature 0.8 \
      --seed "$i" --record-trace "$dir/$(printf %03d $i).jsonl" >/dev/null 2>&1
    i=$((i + 1))
  done < "scripts/prompts/$family.jsonl"
done
python3 scripts/expert_placement.py --machines "${1:-2,4,8}" "$dir"/*.jsonl
