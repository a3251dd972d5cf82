#!/usr/bin/env bash
# Expert-cache hit rate with session affinity (consistent hash on X-Session-Id) against least
# connections, two replicas behind Deploy/nginx/moe-serve.conf, two workloads (docs/SCALING.md).
# Needs nginx (scripts/install-deps.sh) and a release build. Holds the build lock: it is a benchmark.
#   scripts/bench_affinity.sh [--memory-budget 80MiB] [--rounds 2] [--requests 40] [--max-tokens 32]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .build/release/moe-serve ] || { echo "error: build first: swift build -c release" >&2; exit 1; }
exec flock /tmp/moe-build.lock python3 scripts/bench_affinity.py "$@"
