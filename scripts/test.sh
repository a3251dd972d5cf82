#!/usr/bin/env bash
# The test command from the README: installs what the build and the tests need, builds in
# release (the fidelity tests run real forward passes) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

# The HTTP tests drive the server with the real `openai` Python client and parse /metrics with
# `prometheus_client`; they live in a virtual environment outside the repository.
venv="${MOE_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/moe-serve-test-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -c "import openai, prometheus_client" 2>/dev/null \
  || "$venv/bin/pip" install --quiet --disable-pip-version-check openai prometheus_client
export MOE_PYTHON="$venv/bin/python"

# Deploy/'s validators (kubernetes-validate, hadolint) live in their own venv; the tests call
# this script themselves too, so a plain `swift test` works as well.
scripts/deploy-venv.sh >/dev/null

swift build -c release -Xswiftc -enable-testing
swift test -c release -Xswiftc -enable-testing "$@"
