#!/usr/bin/env bash
# Builds the libFuzzer targets (Tests/Fuzz/Targets) once with -sanitize=fuzzer,address and runs
# each for a bounded time from its committed seed corpus (Tests/Fuzz/corpus/<name>).
#   scripts/fuzz.sh [seconds-per-target]     default 30
#   FUZZ_RUNS=1000000 scripts/fuzz.sh        a fixed number of executions per target instead
#     (FUZZ_MAX_SECONDS=N also stops each after N seconds, whichever comes first)
#   FUZZ_TARGETS="http tokenizer" scripts/fuzz.sh    a subset
# Inputs found to be new are kept in .build-fuzz/corpus/<name> (not committed); a crash stops
# the run with the input saved as .build-fuzz/artifacts/<name>-crash-*, and the script fails.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
scratch=.build-fuzz
declare -A products=([http]=FuzzHTTP [tokenizer]=FuzzTokenizer [chat_template]=FuzzChatTemplate [model_formats]=FuzzModelFormats)
targets="${FUZZ_TARGETS:-http tokenizer chat_template model_formats}"
flags=(-c release --scratch-path "$scratch" -Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing)

start=$(date +%s)
for name in $targets; do
  MOE_FUZZ=1 swift build "${flags[@]}" --product "${products[$name]}"
done
bin="$(MOE_FUZZ=1 swift build "${flags[@]}" --show-bin-path)"
echo "fuzz: built in $(( $(date +%s) - start )) s"

mkdir -p "$scratch/artifacts"
for name in $targets; do
  work="$scratch/corpus/$name"
  mkdir -p "$work"
  if [ -n "${FUZZ_RUNS:-}" ]; then
    bound=(-runs="$FUZZ_RUNS")
    [ -n "${FUZZ_MAX_SECONDS:-}" ] && bound+=(-max_total_time="$FUZZ_MAX_SECONDS")
  else
    bound=(-max_total_time="$seconds")
  fi
  echo "fuzz: $name (${bound[*]})"
  t0=$(date +%s)
  # -timeout: one input taking longer is a hang and counts as a failure; -rss_limit_mb likewise.
  ASAN_OPTIONS=detect_leaks=0 "$bin/${products[$name]}" "${bound[@]}" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 -artifact_prefix="$scratch/artifacts/$name-" "$work" "Tests/Fuzz/corpus/$name" \
    > "$scratch/$name.log" 2>&1 || { tail -n 60 "$scratch/$name.log"; echo "fuzz: $name FAILED (log: $scratch/$name.log)"; exit 1; }
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$name.log" | grep -o '[0-9]*$' || echo '?')
  echo "fuzz: $name ok: $runs executions in $(( $(date +%s) - t0 )) s, 0 crashes"
done
