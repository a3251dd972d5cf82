#!/usr/bin/env bash
# Quality cost of --skip-missing-below on held-out text: perplexity and KL against the exact run
# of the same model under the same expert cache, token by token (--batch 1, as decode runs).
#   scripts/bench_lossy.sh MODEL EXPERT_CACHE TEXT THRESHOLD...
# e.g. scripts/bench_lossy.sh DemoModel 3840KiB /tmp/heldout.txt 0.05 0.1 0.2
# Environment: CONTEXT (512), WINDOWS (4). Prints a Markdown table. The decode speed of the same
# thresholds comes from scripts/bench_prefetch_modes.sh (docs/LOSSY.md gives both commands).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { sed -n '2,7p' "$0" >&2; exit 2; }
model="$1"; cache="$2"; text="$3"; shift 3
bin=.build/release/moe-serve
base=$(mktemp /tmp/lossy-base.XXXXXX.safetensors)
trap 'rm -f "$base"' EXIT
common=(perplexity --model "$model" --text "$text" --context "${CONTEXT:-512}" --max-windows "${WINDOWS:-4}" --batch 1 --expert-cache "$cache")
summarise='
import json, sys
d = json.load(sys.stdin); c = d["expert_cache"]["total"]; kl = d.get("kl") or {}
layers = sum(1 for l in d["expert_cache"]["per_layer"] if l); steps = d["windows"] * d["context"]
cells = [sys.argv[1], "%.3f" % d["perplexity"]] + ["%.4f" % kl.get(k, 0) for k in ("mean", "median", "p99")]
cells += ["%.3f" % kl.get("same_top1", 1), "%.3f" % (c["skipped_tokens"] / steps / layers), str(c["misses"]),
          "%.1f" % (c["demand_bytes"] / 1e6), "%.0f" % d["tokens_per_second"]]
print("| " + " | ".join(cells) + " |")'
echo "| threshold | perplexity | mean KL | median KL | p99 KL | same top-1 | tokens skipping / token·layer | misses | demand MB | tok/s |"
echo "|---|---|---|---|---|---|---|---|---|---|"
"$bin" "${common[@]}" --save-logprobs "$base" | python3 -c "$summarise" exact
for w in "$@"; do
  "$bin" "${common[@]}" --kl-base "$base" --skip-missing-below "$w" | python3 -c "$summarise" "$w"
done
