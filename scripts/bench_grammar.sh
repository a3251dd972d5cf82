#!/usr/bin/env bash
# The per-step cost of grammar-constrained decoding's token mask (docs/HTTP.md, "Constrained
# decoding"): a JSON-schema grammar walked token by token on the demo vocabulary (4,096 tokens) and
# on a synthetic 151,936-token one (Qwen3's size). One JSON line per vocabulary on stdout.
# Builds the tests in release first; holds the shared build lock when one exists.
set -euo pipefail
cd "$(dirname "$0")/.."
lock=(); [ -e /tmp/moe-build.lock ] && lock=(flock /tmp/moe-build.lock)
"${lock[@]}" swift build -c release -Xswiftc -enable-testing --build-tests >&2
MOE_BENCH_GRAMMAR=1 "${lock[@]}" swift test -c release -Xswiftc -enable-testing --skip-build \
  --filter 'GrammarMaskBenchmark/maskCostPerStep' 2>&1 | grep '^{"vocabulary"'
