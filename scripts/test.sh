#!/usr/bin/env bash
# The test command from the README: installs what the build needs, builds in release (the
# fidelity tests run real forward passes) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release -Xswiftc -enable-testing
swift test -c release -Xswiftc -enable-testing "$@"
