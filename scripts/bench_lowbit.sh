#!/usr/bin/env bash
# Quality cost of --low-bit-misses on held-out text: perplexity and KL against the exact run of
# the same model under the same expert cache, token by token (--batch 1, as decode runs). The
# model must be a store with low-bit copies (moe-serve low-bit-copies STORE).
#   scripts/bench_lowbit.sh MODEL EXPERT_CACHE TEXT
# e.g. scripts/bench_lowbit.sh /work/bench/lowbit/demo 3840KiB /work/bench/lowbit/heldout.txt
# Environment: CONTEXT (512), WINDOWS (4), LOWBIT_ARGS (extra options of the low-bit run, e.g.
# "--low-bit-share 0.125 --low-bit-promote-after 4"). Prints Markdown table rows (exact, then low-bit).
# Decode speed: scripts/bench_prefetch_modes.sh (docs/LOSSY.md gives both commands).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n '2,9p' "$0" >&2; exit 2; }
model="$1"; cache="$2"; text="$3"
bin=.build/release/moe-serve
base=$(mktemp /tmp/lowbit-base.XXXXXX.safetensors)
trap 'rm -f "$base"' EXIT
common=(perplexity --model "$model" --text "$text" --context "${CONTEXT:-512}" --max-windows "${WINDOWS:-4}" --batch 1 --expert-cache "$cache")
summarise='
import json, sys
d = json.load(sys.stdin); c = d["expert_cache"]["total"]; kl = d.get("kl") or {}
cells = [sys.argv[1], "%.3f" % d["perplexity"]] + ["%.4f" % kl.get(k, 0) for k in ("mean", "median", "p99")]
cells += ["%.3f" % kl.get("same_top1", 1), str(c["misses"]), str(c.get("low_bit_uses", 0)), str(c.get("low_bit_promotions", 0)),
          "%.1f" % (c["demand_bytes"] / 1e6), "%.1f" % (c.get("low_bit_bytes", 0) / 1e6), "%.1f" % (c["prefetch_bytes"] / 1e6),
          "%.0f" % d["tokens_per_second"]]
print("| " + " | ".join(cells) + " |")'
echo "| mode | perplexity | mean KL | median KL | p99 KL | same top-1 | misses | low-bit uses | promotions | demand MB | low-bit MB | prefetch MB | tok/s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
"$bin" "${common[@]}" --save-logprobs "$base" | python3 -c "$summarise" exact
read -r -a lowbit_args <<< "${LOWBIT_ARGS:-}"
"$bin" "${common[@]}" --kl-base "$base" --low-bit-misses on "${lowbit_args[@]}" | python3 -c "$summarise" low-bit
