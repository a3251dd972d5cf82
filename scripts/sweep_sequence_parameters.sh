#!/bin/bash
# The default sequence policy's share of the shared pool's LRU→Belady gap, replayed with the runtime's steps
# (`bench trace --as-recorded`), for each MOE_SEQUENCE_PARAMETERS setting (priorWeight,recencyWeight,recencyHalfLife,longHalfLife).
# Usage: TRACES=DIR [LIVE="a.jsonl b.jsonl"] scripts/sweep_sequence_parameters.sh SETTING...
#   DIR holds python.jsonl, prose.jsonl and synth.jsonl (replayed at 8/12/16 experts per layer, gap over every step);
#   LIVE are traces from `bench batch --record-trace` (replayed at 8 per layer, gap over the decode window).
# Prints one line per setting: the nine cells, then one figure per live trace.
set -euo pipefail
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/.build/release/moe-serve}
: "${TRACES:?set TRACES to the directory of python.jsonl, prose.jsonl and synth.jsonl}"
gap() { python3 -c "import json,sys; print(round(100*json.load(sys.stdin)['$1']['sequence_global']))"; }
for setting in "$@"; do
  line="$setting:"
  for trace in python prose synth; do
    for cache in 8 12 16; do
      line="$line $(MOE_SEQUENCE_PARAMETERS=$setting "$B" bench trace "$TRACES/$trace.jsonl" --cache-per-layer $cache --as-recorded 2>/dev/null | gap gap_closed)"
    done
  done
  for live in ${LIVE:-}; do
    line="$line | $(MOE_SEQUENCE_PARAMETERS=$setting "$B" bench trace "$live" --cache-per-layer 8 --as-recorded 2>/dev/null | gap gap_closed_decode_window)"
  done
  echo "$line"
done
