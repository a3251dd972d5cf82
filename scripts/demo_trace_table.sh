#!/usr/bin/env bash
# Records routing traces of the bundled demo model on held-out Python prompts (greedy, 128 tokens each),
# then replays them through every cache policy and Belady at several cache sizes: hit rates, then the
# share of the LRU→Belady gap each policy closes (same pool).
#   scripts/demo_trace_table.sh [MODEL] [TOKENS] [PROMPTS.jsonl] [TEMPERATURE]
# (defaults: DemoModel, 128, scripts/prompts/python.jsonl, 0 = greedy; sampling uses seed = prompt index).
# TRACE_OUT=FILE keeps the recorded trace.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-DemoModel}"; tokens="${2:-128}"; prompts="${3:-scripts/prompts/python.jsonl}"; temperature="${4:-0}"
bin=.build/release/moe-serve
[ -x "$bin" ] || swift build -c release --product moe-serve >&2
trace=$(mktemp /tmp/demo-trace.XXXXXX.jsonl)
part=$(mktemp /tmp/demo-trace-part.XXXXXX.jsonl)
seq=0
while IFS= read -r line; do
  prompt=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]), end="")' "$line")
  "$bin" generate --model "$model" --prompt "$prompt" --max-tokens "$tokens" --ignore-eos --record-trace "$part" \
      --temperature "$temperature" --seed "$seq" >/dev/null
  # Give each prompt its own sequence id; caches persist across sequences in the replay.
  python3 -c 'import json,sys
for l in open(sys.argv[1]):
    o = json.loads(l); o["seq"] = int(sys.argv[2]); print(json.dumps(o))' "$part" "$seq" >> "$trace"
  seq=$((seq + 1))
done < "$prompts"
echo "trace: $trace ($(wc -l < "$trace") tokens)" >&2
for c in 4 8 12 16; do
  "$bin" bench trace "$trace" --cache-per-layer "$c" 2>/dev/null
done | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.startswith("{")]
names = list(rows[0]["policies"])
print("| experts cached per layer (of 32) | " + " | ".join(names) + " |")
print("|---" * (len(names) + 1) + "|")
for r in rows:
    cells = ["%.3f" % r["policies"][n]["hit_rate"] for n in names]
    print("| %d | %s |" % (r["cache_per_layer"], " | ".join(cells)))
print()
print("share of the LRU→Belady gap closed (per-layer pools against lru/belady, shared pool against lru_global/belady_global):")
print()
print("| experts cached per layer (of 32) | " + " | ".join(names) + " |")
print("|---" * (len(names) + 1) + "|")
for r in rows:
    cells = ["%.0f%%" % (100 * r["gap_closed"][n]) if n in r.get("gap_closed", {}) else "—" for n in names]
    print("| %d | %s |" % (r["cache_per_layer"], " | ".join(cells)))
'
rm -f "$part"
if [ -n "${TRACE_OUT:-}" ]; then mv "$trace" "$TRACE_OUT"; else rm -f "$trace"; fi
