#!/usr/bin/env bash
# Installs the Debian packages MoEServe builds against. Idempotent: does nothing when they
# are all present already.
set -euo pipefail
# liburing-dev: the io_uring expert reader; nginx: the balancer of the Deploy/nginx failover test; systemd:
# systemd-analyze for the unit test; chromium: the headless browser of the chat page test (ChatPageEndToEndTests).
packages=(libuv1-dev libopenblas-dev liblz4-dev liburing-dev libhttp-parser-dev pkg-config curl python3-venv nginx systemd chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
